"""The self-contained HTML report (``brainstore.fitting.reports._html``): numbers checked against the metrics
computed independently, captions against the dataset, escaping, and a real headless Chromium that
renders it with no console error, no request leaving the file and every image loaded."""

from __future__ import annotations

import base64
import json
import math
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VOID = {"img", "meta", "br", "hr", "input", "link", "source", "wbr", "col", "area", "base", "embed", "track"}


# ------------------------------------------------------------------------------------------ a tiny DOM
class Node:
    def __init__(self, tag: str, attrs: dict, parent: "Node | None"):
        self.tag, self.attrs, self.parent, self.children = tag, attrs, parent, []

    @property
    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def find_all(self, tag: str | None = None, cls: str | None = None) -> list["Node"]:
        out = []
        for c in self.children:
            if isinstance(c, Node):
                if (tag is None or c.tag == tag) and (cls is None or cls in c.classes):
                    out.append(c)
                out += c.find_all(tag, cls)
        return out

    def find(self, tag: str | None = None, cls: str | None = None) -> "Node":
        found = self.find_all(tag, cls)
        assert found, f"no <{tag} class={cls}> under <{self.tag}>"
        return found[0]


class _Builder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = self.cur = Node("#root", {}, None)

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs), self.cur)
        self.cur.children.append(node)
        if tag not in VOID:
            self.cur = node

    def handle_endtag(self, tag):
        n = self.cur
        while n is not None and n.tag != tag:
            n = n.parent
        assert n is not None, f"stray </{tag}>"
        self.cur = n.parent

    def handle_data(self, data):
        self.cur.children.append(data)


def parse(text: str) -> Node:
    b = _Builder()
    b.feed(text)
    b.close()
    assert b.cur is b.root, "unclosed elements"
    return b.root


def rows(table: Node) -> list[list[Node]]:
    return [tr.find_all("td") for tr in table.find("tbody").find_all("tr")]


def section(doc: Node, sid: str) -> Node:
    return next(s for s in doc.find_all("section") if s.attrs.get("id") == sid)


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def evaluated(serving_models, tmp_path_factory) -> dict:
    """A copy of the serving registry with a banded model added (for subj01 only: quicker, and models then
    cover different subjects), evaluated by `brainstore evaluate` (metrics.json + report.html)."""
    from typer.testing import CliRunner

    from brainstore.cluster.cli import app
    from brainstore.fitting import FitSpec, fit_encoding_models

    root = tmp_path_factory.mktemp("html")
    registry = root / "registry"
    shutil.copytree(serving_models["registry"], registry, ignore=shutil.ignore_patterns("_runs"))
    data, store = serving_models["data"], serving_models["store"]
    spec = FitSpec(dataset=str(data), alphas=[1.0, 100.0, 10000.0], folds=3, subjects=["subj01"],  # (quicker)
                   models=[{"name": "band", "features": [serving_models["img"], serving_models["txt"]],
                            "method": "banded"}])
    run = fit_encoding_models(spec, store=store, registry=str(registry), out=root / "run", progress=False)
    assert not run.failures, run.failures
    out = root / "evaluate"
    r = CliRunner().invoke(app, ["evaluate", "--dataset", str(data), "--registry", str(registry), "--out", str(out)],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "metrics.json").read_text())
    return {**serving_models, "registry": str(registry), "out": out, "output": r.output, "doc": doc,
            "html": (out / "report.html").read_text(encoding="utf-8")}


# ------------------------------------------------------------------------------------------ tests
@pytest.mark.slow
def test_evaluate_writes_a_report_whose_numbers_are_the_metrics(evaluated):
    from brainstore.datasets import HEMISPHERES, REPORT_FAMILIES, AlgonautsDataset
    from brainstore.fitting.reports._evaluate import score_submission

    html_path = evaluated["out"] / "report.html"
    assert "HTML report:" in evaluated["output"] and str(html_path) in evaluated["output"].replace("\n", "")
    metrics, kinds, decoders = evaluated["doc"]["metrics"], evaluated["doc"]["kinds"], evaluated["doc"]["decoders"]
    assert set(metrics) == {"img", "both", "band"} and kinds["band"] == "banded" and list(metrics["band"]) == ["subj01"]
    doc = parse(evaluated["html"])
    ds = AlgonautsDataset(evaluated["data"])

    # Table 1: one row per model, NNMC = mean over subjects of the all-vertex test NNMC, best in bold
    t1 = section(doc, "table1").find("table", "table1")
    assert [th.text() for th in t1.find("thead").find_all("th")] == ["Features and Methods", "NNMC score"]
    means = {m: float(np.mean([by_s[s]["both"]["test_nnmc"] for s in by_s])) for m, by_s in metrics.items()}
    got = {}
    for label, score in rows(t1):
        model = label.find("span", "model").text()
        got[model] = score
        assert score.text() == f"{means[model]:.2f}"
        assert math.isclose(float(score.attrs["data-value"]), means[model], rel_tol=1e-9)
    assert set(got) == set(means)
    best = max(means, key=means.get)
    assert [m for m, c in got.items() if c.find_all("b")] == [best]
    # the tables made with random weights are flagged on the models that read them
    assert all("RANDOM WEIGHTS" in lab.text() for lab, _ in rows(t1))

    # per-ROI tables per subject: models, then the noise ceiling and the oracle computed here by hand
    oracle = score_submission(ds, ds.root / "ground_truth")
    enc = section(doc, "encoding")
    for s in ds.subjects:
        table = enc.find("table", f"subject-{s}")
        by_label = {r[0].text(): [c.text() for c in r[2:]] for r in rows(table)}
        for m in (m for m in metrics if s in metrics[m]):
            both = metrics[m][s]["both"]
            want = [both["test_nnmc"], *[both["test_nnmc_roi"][f] for f in REPORT_FAMILIES]]
            assert by_label[m] == [f"{v:.2f}" for v in want]
        nc = np.concatenate([ds.noise_ceiling(s, h) for h in HEMISPHERES]) * 100
        assert by_label["noise ceiling (mean NC, %)"][0] == f"{nc.mean():.2f}"
        assert by_label["oracle: noiseless responses"][0] == f"{oracle[s]['both']['roi']['all']:.2f}"
    assert len(enc.find_all("img")) == len(ds.subjects)

    # retrieval: both directions with their intervals and chance, per decoder and subject
    ret = section(doc, "retrieval").find("table", "retrieval")
    (dname,) = decoders
    for r in rows(ret):
        cells = [c.text() for c in r]
        m = decoders[cells[0]][cells[3]]
        lo, hi = m["top1_brain_to_stimulus_ci95"]
        assert cells[1] == "ridge" and cells[2] == evaluated["txt"] and cells[4] == "40"
        assert cells[5] == f"{m['top1_brain_to_stimulus']:.3f} [{lo:.2f}, {hi:.2f}]"
        assert cells[6].startswith(f"{m['top1_stimulus_to_brain']:.3f} [")
        assert cells[7] == f"{1 / 40:.4f}" == f"{m['chance']:.4f}"
    assert sorted(r[3].text() for r in rows(ret)) == ds.subjects
    assert section(doc, "retrieval").find_all("img")

    # captions: the true captions are the dataset's, for the first test images of each subject
    from brainstore.fitting.reports._html import N_CAPTIONS
    from brainstore.fitting import subject_stimuli

    caps = section(doc, "captions").find("table", "captions")
    true = [c.find("span", "caption-true") for r in rows(caps) for c in r[2:3]]
    decoded = [c.find("span", "caption-decoded") for r in rows(caps) for c in r[3:4]]
    want_ids = [i for s in ds.subjects for i in subject_stimuli(ds, s, "test")[:N_CAPTIONS]]
    assert [t.attrs["data-stimulus"] for t in true] == want_ids
    for s in ds.subjects:
        t = ds.stimuli([s])
        caption = dict(zip(t.column("stimulus_id").to_pylist(), t.column("caption").to_pylist()))
        train = set(subject_stimuli(ds, s, "train"))
        for r in rows(caps):
            if r[0].text() == s:
                tr, dc = r[2].find("span", "caption-true"), r[3].find("span", "caption-decoded")
                assert tr.text() == caption[tr.attrs["data-stimulus"]] and tr.text()
                # the decoded caption is a training stimulus's own caption (test captions are never candidates)
                assert dc.attrs["data-stimulus"] in train and dc.text() == caption[dc.attrs["data-stimulus"]]
    assert len(decoded) == len(true) == N_CAPTIONS * len(ds.subjects)

    # banded split: each feature space's share, as split_rows averages it
    split = section(doc, "split")
    got_split = {(r[0].text(), r[1].text()): [c.text() for c in r[2:]] for r in rows(split.find("table", "split"))}
    for space in (evaluated["img"], evaluated["txt"]):
        subs = [m["both"]["split_test_r_roi"][space] for m in metrics["band"].values()]
        want = [float(np.mean([x[c] for x in subs])) for c in ["all", *REPORT_FAMILIES]]
        assert got_split[("band", space)] == [f"{v:.3f}" for v in want]
    assert split.find_all("img")

    # provenance: feature tables with their metadata, the random one badged, versions, dataset, extra
    prov = section(doc, "provenance")
    cards = {c.find("h4").find("code").text(): c for c in prov.find_all("div", "table-card")}
    assert set(cards) == {evaluated["img"], evaluated["txt"]}
    assert "RANDOM WEIGHTS" in cards[evaluated["img"]].find("h4").text()
    assert "RANDOM WEIGHTS" not in cards[evaluated["txt"]].text()
    txt_meta = {r[0].text(): r[1].text() for r in rows(cards[evaluated["txt"]].find("table", "table-meta"))}
    assert txt_meta["extractor"] == "text" and len(txt_meta["weights sha256"]) == 64
    assert set(txt_meta["used by"].split(", ")) == {"both", "band", dname}
    import numpy

    text = prov.text()
    assert f"numpy{numpy.__version__}" in text.replace(" ", "")
    assert str(ds.root) in text and evaluated["registry"] in text and evaluated["store"] in text
    assert "brainstore evaluate" in prov.find("table", "extra").text()


def _without_frames(html: str) -> str:
    """The report less the maps' 3-D view (an iframe whose srcdoc holds its own page, scripts included)."""
    import re

    return re.sub(r'srcdoc="[^"]*"', 'srcdoc=""', html)


@pytest.mark.slow
def test_report_is_self_contained(evaluated):
    html = evaluated["html"]
    doc = parse(html)
    lower = _without_frames(html).lower()
    assert "<script" not in lower and "@import" not in lower and "url(" not in lower
    for node in doc.find_all():
        for attr in ("src", "href", "srcset", "action", "data", "poster"):
            v = node.attrs.get(attr)
            if v is not None:
                assert v.startswith("#") or v.startswith("data:image/png;base64,"), (node.tag, attr, v[:60])
        assert not any(a.startswith("on") for a in node.attrs), node.attrs  # no event handlers
    for frame in doc.find_all("iframe"):  # the maps' 3-D view: sandboxed, its page inline, nothing fetched
        assert frame.attrs["sandbox"] == "allow-scripts" and "<script src" not in frame.attrs["srcdoc"].lower()
    imgs = doc.find_all("img")
    maps = section(doc, "maps").find_all("img")
    assert len(imgs) - len(maps) == 4  # ROI bars of the 2 subjects, retrieval, split (and the maps): all PNGs
    for img in imgs:
        assert base64.b64decode(img.attrs["src"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_escape_helper():
    from brainstore.fitting.reports._html import _esc

    assert _esc("<script>alert('x')</script> & \"q\"") == \
        "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;q&quot;"
    assert _esc(None) == "" and _esc(3) == "3"


@pytest.mark.slow
def test_captions_and_extras_from_data_are_escaped(evaluated, tmp_path):
    """Metrics computed by the writer itself (none given), on a dataset whose captions hold markup."""
    from brainstore.fitting.reports._html import write_html_report
    from brainstore.datasets import AlgonautsDataset

    ds = AlgonautsDataset(evaluated["data"])
    evil = "<script>alert('caption')</script> & <b>bold</b>"
    ds.__dict__["captions"] = {k: f"{v} {evil}" for k, v in ds.captions.items()}  # this object's captions only
    path = write_html_report(tmp_path / "sub" / "r.html", dataset=ds, registry=evaluated["registry"],
                             title="<i>title</i>", provenance_extra={"<img src=x>": {"nested": "<script>"}})
    html = path.read_text(encoding="utf-8")
    assert "<script" not in _without_frames(html).lower() and "<img src=x" not in html and "<i>title" not in html
    doc = parse(html)
    true = [s for s in doc.find_all("span", "caption-true")]
    assert true and all(s.text().endswith(evil) for s in true)  # escaped in the file, the text itself once parsed
    assert "&lt;script&gt;alert(&#x27;caption&#x27;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in html
    assert doc.find("title").text() == "<i>title</i>"
    # the metrics were computed by the writer: the same Table 1 as `brainstore evaluate`'s
    t1 = doc.find("table", "table1")
    assert {lab.find("span", "model").text(): sc.text() for lab, sc in rows(t1)} == \
        {lab.find("span", "model").text(): sc.text() for lab, sc in rows(parse(evaluated["html"]).find("table", "table1"))}


@pytest.mark.slow
def test_report_from_metrics_json(evaluated, tmp_path):
    """As the pipeline's report stage calls it: metrics, kinds and decoders read back from metrics.json."""
    from brainstore.fitting.reports._html import write_html_report

    doc = evaluated["doc"]
    path = write_html_report(tmp_path / "r.html", dataset=evaluated["data"], registry=evaluated["registry"],
                             store=evaluated["store"], metrics=doc["metrics"], kinds=doc["kinds"],
                             decoders=doc["decoders"], provenance_extra={"stages": {"fit": "f" * 64}})
    new, cli = parse(path.read_text(encoding="utf-8")), parse(evaluated["html"])
    for cls in ("table1", "retrieval", "captions", "split"):
        assert [[c.text() for c in r] for r in rows(new.find("table", cls))] == \
            [[c.text() for c in r] for r in rows(cli.find("table", cls))], cls
    extra = new.find("table", "extra")
    assert rows(extra)[0][0].text() == "stages" and "f" * 64 in extra.find("table", "nested").text()


def _in_chromium(path: Path, probe) -> tuple[dict, list, list, list]:
    """Open ``path`` in headless Chromium with every request but the file itself refused; ``probe(page)``
    reads what it needs. Returns (what it read, console errors, refused requests, failed requests)."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (`apt-get install -y chromium`, as root; "
                    "`./go test` does it) for the headless-browser test", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: `pip install playwright==1.65.2` (in the dev extras; "
                    "`./go setup` installs it)", pytrace=False)
    url = path.as_uri()
    errors, outside, failed = [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: failed.append(r.url[:100]))

            def route(r):
                if r.request.url == url:
                    r.continue_()
                else:  # anything but the file itself leaves it: refused, and recorded
                    outside.append(r.request.url[:100])
                    r.abort()

            page.route("**/*", route)
            page.goto(url, wait_until="load")
            got = probe(page)
        finally:
            browser.close()
    return got, errors, outside, failed


def _page_facts(page) -> dict:
    return {"images": page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth])"),
            "title": page.title(),
            "sections": page.evaluate("Array.from(document.querySelectorAll('section')).map(s => s.id)"),
            "width": page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")}


@pytest.mark.slow
def test_report_renders_in_chromium(evaluated):
    got, errors, outside, failed = _in_chromium(evaluated["out"] / "report.html", _page_facts)
    assert not errors, errors
    assert not outside, outside
    assert not failed, failed
    images, width = got["images"], got["width"]
    assert images and all(done and w > 0 for done, w in images), images
    assert got["title"].startswith("brainstore evaluate")
    assert got["sections"] == ["encoding", "table1", "maps", "retrieval", "captions", "split", "lineage",
                               "provenance"]
    assert width[0] <= width[1], f"the page is wider than the window: {width}"


@pytest.mark.slow
def test_maps_render_in_chromium(mapped):
    """The maps section of a dataset with a cortex: every picture decodes, the 3-D view's plotly graph is
    drawn in its sandboxed frame (no console error, nothing fetched: data: and about: only)."""
    def probe(page):
        facts = _page_facts(page)
        facts["maps"] = page.evaluate("Array.from(document.querySelectorAll('#maps img')).map(i => i.naturalWidth)")
        page.wait_for_function("document.querySelector('#maps iframe') !== null", timeout=30_000)
        for _ in range(300):  # the sandboxed frame attaches once the page has parsed it (slow on a loaded box)
            frames = [f for f in page.frames if f.url == "about:srcdoc"]
            if frames:
                break
            page.wait_for_timeout(100)
        (frame,) = frames
        frame.wait_for_selector(".js-plotly-plot", timeout=30_000)
        frame.wait_for_function("document.querySelector('.js-plotly-plot canvas, .js-plotly-plot svg') !== null",
                                timeout=30_000)
        facts["graph"] = frame.evaluate("[document.querySelectorAll('.js-plotly-plot').length, "
                                        "document.querySelectorAll('.js-plotly-plot canvas').length, "
                                        "document.querySelectorAll('.js-plotly-plot svg').length]")
        page.wait_for_timeout(500)  # (errors a late draw would report)
        return facts

    got, errors, outside, failed = _in_chromium(mapped["ev"].html, probe)
    assert not errors, errors
    assert not outside, outside
    assert not failed, failed
    assert len(got["maps"]) == 7 and all(w > 1000 for w in got["maps"]), got["maps"]  # 2 subjects, average, NC
    assert all(done and w > 0 for done, w in got["images"]), got["images"]
    n_graphs, n_canvas, n_svg = got["graph"]
    assert n_graphs == 1 and n_canvas + n_svg > 0, got["graph"]
    assert "maps" in got["sections"]
