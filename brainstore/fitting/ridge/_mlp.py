"""MLP projector encoding model (features -> voxels), to compare against voxelwise ridge.

The network is ``Linear(p, hidden) -> GELU -> Dropout`` repeated ``n_layers`` times, then
``Linear(hidden, t)``. It is trained on per-target standardized responses with
``MSE + cosine_weight * (1 - cos(pred, true))``, the cosine taken per sample across targets (the
loss pairing used by Algonauts 2023 MLP projectors), by AdamW with early stopping on a held-out
contiguous validation block scored by mean Pearson r over targets.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted
from torch import nn

from .._errors import check_finite_output
from ._estimator import EncoderBase, resolve_device
from ._scaling import input_eps, robust_scale

__all__ = ["MLPEncoder"]

#: Standardization statistics saved by :meth:`MLPEncoder.state_dict` besides the weights.
_STATS = ("x_mean_", "x_scale_", "y_mean_", "y_scale_")


def _as_float(a: Any, name: str, ndims: tuple[int, ...]) -> np.ndarray:
    """``a`` as a float32 array, refusing wrong dimensionality, non-numeric dtypes and NaN/inf."""
    arr = np.asarray(a)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    if arr.ndim not in ndims:
        want = "(n_samples, n_features)" if ndims == (2,) else "(n_samples, n_targets) or (n_samples,)"
        raise ValueError(f"{name} must have shape {want}, got shape {arr.shape}")
    arr = arr.astype(np.float32, copy=False)
    finite = np.isfinite(arr).reshape(len(arr), -1).all(1)
    if not finite.all():
        rows = np.flatnonzero(~finite)
        raise ValueError(f"{name} has NaN or inf values in {len(rows)} row(s) (first: {rows[:5].tolist()}); "
                         "impute or drop those samples")
    return arr


def _build(n_in: int, hidden: int, n_layers: int, n_out: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = n_in
    for _ in range(n_layers):
        layers += [nn.Linear(d, hidden), nn.GELU(), nn.Dropout(dropout)]
        d = hidden
    layers.append(nn.Linear(d, n_out))
    return nn.Sequential(*layers)


def _linears(net: nn.Sequential) -> list[nn.Linear]:
    return [m for m in net if isinstance(m, nn.Linear)]


def _loss(pred: torch.Tensor, true: torch.Tensor, cosine_weight: float) -> torch.Tensor:
    """MSE + ``cosine_weight`` * mean over samples of (1 - cosine(pred_i, true_i)) across targets."""
    loss = torch.mean((pred - true) ** 2)
    if cosine_weight:
        loss = loss + cosine_weight * (1 - nn.functional.cosine_similarity(pred, true, dim=1, eps=1e-8).mean())
    return loss


def _mean_r(pred: torch.Tensor, true: torch.Tensor) -> float:
    """Mean over targets of Pearson r between columns (constant columns count as 0)."""
    p = pred - pred.mean(0)
    t = true - true.mean(0)
    den = torch.sqrt((p * p).sum(0) * (t * t).sum(0))
    r = torch.where(den > 0, (p * t).sum(0) / den.clamp_min(1e-30), torch.zeros_like(den))
    return float(r.mean())


class MLPEncoder(EncoderBase):
    """Encoding model with an MLP projector, trained with MSE + cosine-distance loss.

    Parameters
    ----------
    hidden : int
        Width of the hidden layers.
    n_layers : int
        Number of hidden ``Linear -> GELU -> Dropout`` blocks (0: a linear model).
    dropout : float
        Dropout probability after each hidden activation.
    lr, weight_decay : float
        AdamW learning rate and decoupled weight decay.
    epochs : int
        Maximum number of passes over the training samples.
    batch_size : int
    cosine_weight : float
        Weight of the cosine-distance term (0: plain MSE).
    val_fraction : float
        Fraction of samples, taken as the last contiguous block, held out for early stopping
        (0: train all ``epochs`` on every sample and keep the final weights).
    patience : int
        Stop after this many epochs without a better validation mean Pearson r (0: never stop
        early; the best epoch's weights are still restored).
    standardize : bool
        Z-score features with training statistics (targets are always standardized internally).
    device : {"auto", "cpu", "cuda", ...}
        "auto" uses CUDA when available.
    seed : int
        Seeds weight initialization, batch order and dropout (results are deterministic on CPU).

    Attributes
    ----------
    net_ : torch.nn.Sequential
    x_mean_, x_scale_ : ndarray of shape (n_features,)
    y_mean_, y_scale_ : ndarray of shape (n_targets,)
        Predictions are ``net_((X - x_mean_) / x_scale_) * y_scale_ + y_mean_``.
    loss_curve_ : list of float
        Mean training loss per epoch.
    val_scores_ : list of float
        Validation mean Pearson r per epoch (empty without a validation split).
    best_epoch_ : int
        Epoch (0-based) whose weights were kept.
    n_features_in_, n_targets_ : int
    """

    def __init__(self, hidden: int = 512, n_layers: int = 1, dropout: float = 0.2, lr: float = 1e-3,
                 weight_decay: float = 1e-4, epochs: int = 60, batch_size: int = 128, cosine_weight: float = 0.5,
                 val_fraction: float = 0.1, patience: int = 8, standardize: bool = True, device: str = "auto",
                 seed: int = 0):
        self.hidden = hidden
        self.n_layers = n_layers
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.batch_size = batch_size
        self.cosine_weight = cosine_weight
        self.val_fraction = val_fraction
        self.patience = patience
        self.standardize = standardize
        self.device = device
        self.seed = seed

    def _check_params(self) -> None:
        checks = [("hidden", self.hidden >= 1), ("n_layers", self.n_layers >= 0),
                  ("dropout", 0 <= self.dropout < 1), ("lr", self.lr > 0), ("weight_decay", self.weight_decay >= 0),
                  ("epochs", self.epochs >= 1), ("batch_size", self.batch_size >= 1),
                  ("cosine_weight", self.cosine_weight >= 0), ("val_fraction", 0 <= self.val_fraction < 1),
                  ("patience", self.patience >= 0)]
        rules = {"hidden": ">= 1", "n_layers": ">= 0", "dropout": "in [0, 1)", "lr": "> 0", "weight_decay": ">= 0",
                 "epochs": ">= 1", "batch_size": ">= 1", "cosine_weight": ">= 0", "val_fraction": "in [0, 1)",
                 "patience": ">= 0"}
        for name, ok in checks:
            if not ok:
                raise ValueError(f"MLPEncoder parameter {name} must be {rules[name]}, got {getattr(self, name)!r}")

    def fit(self, X: np.ndarray, Y: np.ndarray) -> "MLPEncoder":
        """Train the network.

        Parameters
        ----------
        X : array of shape (n_samples, n_features)
        Y : array of shape (n_samples, n_targets) or (n_samples,)

        Returns
        -------
        self : MLPEncoder
        """
        self._check_params()
        X = _as_float(X, "X", (2,))
        Y = _as_float(Y, "Y", (1, 2))
        if len(X) != len(Y):
            raise ValueError(f"X has {len(X)} rows but Y has {len(Y)}; they must hold the same samples")
        self._y_1d = Y.ndim == 1
        Y = Y.reshape(len(Y), -1)
        n = len(X)
        n_val = int(round(n * self.val_fraction))
        if n_val < 2 or n - n_val < 2:
            if self.val_fraction > 0 and n >= 4:
                n_val = 2
            else:
                n_val = 0
        n_tr = n - n_val
        if n_tr < 2:
            raise ValueError(f"X and Y have {n} samples; the MLP needs at least 2 training samples")
        Xtr, Ytr = X[:n_tr], Y[:n_tr]
        if self.standardize:
            mean = Xtr.mean(0, dtype=np.float64)
            scale, const = robust_scale(Xtr.std(0, dtype=np.float64), mean, input_eps(X))
            self.x_mean_, self.x_scale_ = mean.astype(np.float32), scale.astype(np.float32)
        else:
            const = np.zeros(X.shape[1], bool)
            self.x_mean_ = np.zeros(X.shape[1], np.float32)
            self.x_scale_ = np.ones(X.shape[1], np.float32)
        self.y_mean_ = Ytr.mean(0, dtype=np.float64).astype(np.float32)
        sd = Ytr.std(0, dtype=np.float64)
        self.y_scale_ = np.where(sd > 1e-12, sd, 1.0).astype(np.float32)
        self.n_features_in_, self.n_targets_ = X.shape[1], Y.shape[1]

        dev = resolve_device(self.device)
        Xs = torch.from_numpy((X - self.x_mean_) / self.x_scale_).to(dev)
        Ys = torch.from_numpy((Y - self.y_mean_) / self.y_scale_).to(dev)
        cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(self.seed)
            net = _build(self.n_features_in_, self.hidden, self.n_layers, self.n_targets_, self.dropout).to(dev)
            self.net_ = self._train(net, Xs[:n_tr], Ys[:n_tr], Xs[n_tr:], Ys[n_tr:])
        with torch.no_grad():  # constant columns were zero on every training row: new inputs' values there count for nothing
            _linears(self.net_)[0].weight[:, torch.from_numpy(const).to(dev)] = 0
        return self

    def _train(self, net: nn.Sequential, Xtr: torch.Tensor, Ytr: torch.Tensor, Xva: torch.Tensor,
               Yva: torch.Tensor) -> nn.Sequential:
        """AdamW epochs with early stopping on the validation block; returns the net at its best epoch."""
        gen = torch.Generator().manual_seed(self.seed)
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        n_tr, bs = len(Xtr), min(self.batch_size, len(Xtr))
        self.loss_curve_, self.val_scores_, self.best_epoch_ = [], [], self.epochs - 1
        best, best_state, stale = -math.inf, None, 0
        for epoch in range(self.epochs):
            net.train()
            perm = torch.randperm(n_tr, generator=gen).to(Xtr.device)
            total = 0.0
            for start in range(0, n_tr, bs):
                idx = perm[start:start + bs]
                loss = _loss(net(Xtr[idx]), Ytr[idx], self.cosine_weight)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            self.loss_curve_.append(total / n_tr)
            if not len(Xva):
                continue
            net.eval()
            with torch.no_grad():
                r = _mean_r(net(Xva), Yva)
            self.val_scores_.append(r)
            if r > best + 1e-7:
                best, stale, self.best_epoch_ = r, 0, epoch
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            else:
                stale += 1
                if self.patience and stale >= self.patience:
                    break
        if best_state is not None:
            net.load_state_dict(best_state)
        return net.eval()

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predict responses.

        Parameters
        ----------
        X : array of shape (n_samples, n_features)

        Returns
        -------
        Y_pred : ndarray of shape (n_samples, n_targets), float32, or (n_samples,) when fit on a 1-D ``Y``.
        """
        check_is_fitted(self, "net_")
        X = _as_float(X, "X", (2,))
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features but the MLPEncoder was fit on {self.n_features_in_}")
        dev = next(self.net_.parameters()).device
        out = np.empty((len(X), self.n_targets_), np.float32)
        self.net_.eval()
        with torch.no_grad():
            for start in range(0, len(X), 8192):
                xb = torch.from_numpy((X[start:start + 8192] - self.x_mean_) / self.x_scale_).to(dev)
                out[start:start + 8192] = self.net_(xb).cpu().numpy()
        out = out * self.y_scale_ + self.y_mean_
        check_finite_output(out, model=type(self).__name__, field="X")
        return self._as_fitted(out)

    def _score_targets(self, Y: np.ndarray, P: np.ndarray) -> np.ndarray:
        """``Y`` checked as :meth:`fit` checks it, with one column per fitted target."""
        Y = _as_float(Y, "Y", (1, 2)).reshape(len(Y), -1)
        if Y.shape != P.shape:
            raise ValueError(f"Y has shape {Y.shape}; expected {P.shape} (one column per fitted target)")
        return Y

    def state_dict(self) -> dict[str, np.ndarray]:
        """Weights (``layers.{i}.weight`` of shape (out, in), ``layers.{i}.bias``), standardization
        statistics and ``y_1d``, as numpy arrays (e.g. for :class:`~brainstore.fitting.ModelRegistry`).

        Hyper-parameters other than the layer sizes are not included; keep them with ``get_params()``.
        """
        check_is_fitted(self, "net_")
        out: dict[str, np.ndarray] = {}
        for i, lin in enumerate(_linears(self.net_)):
            out[f"layers.{i}.weight"] = lin.weight.detach().cpu().numpy().copy()
            out[f"layers.{i}.bias"] = lin.bias.detach().cpu().numpy().copy()
        for k in _STATS:
            out[k] = np.ascontiguousarray(getattr(self, k))
        out["y_1d"] = self._y_1d_state()
        return out

    @classmethod
    def from_state_dict(cls, state: dict[str, np.ndarray], **params: Any) -> "MLPEncoder":
        """Rebuild a fitted encoder from :meth:`state_dict` output.

        ``hidden`` and ``n_layers`` are read from the weight shapes (passing different values is
        an error); other ``params`` (e.g. ``device="cpu"``) go to the constructor.
        """
        n_lin = sum(1 for k in state if k.startswith("layers.") and k.endswith(".weight"))
        missing = [k for i in range(n_lin) for k in (f"layers.{i}.weight", f"layers.{i}.bias") if k not in state]
        missing += [k for k in _STATS if k not in state]
        if n_lin == 0 or missing:
            raise KeyError(f"MLPEncoder state is missing {missing or ['layers.0.weight']}; "
                           "pass the dict returned by MLPEncoder.state_dict()")
        weights = [np.asarray(state[f"layers.{i}.weight"], dtype=np.float32) for i in range(n_lin)]
        inferred = {"n_layers": n_lin - 1}
        if n_lin > 1:
            inferred["hidden"] = weights[0].shape[0]
        for k, v in inferred.items():
            if k in params and params[k] != v:
                raise ValueError(f"from_state_dict: {k}={params[k]!r} disagrees with the saved weights ({k}={v})")
        est = cls(**{**params, **inferred})
        est._check_params()
        n_in, n_out = weights[0].shape[1], weights[-1].shape[0]
        net = _build(n_in, est.hidden, est.n_layers, n_out, est.dropout)
        with torch.no_grad():
            for i, lin in enumerate(_linears(net)):
                if lin.weight.shape != weights[i].shape:
                    raise ValueError(f"layers.{i}.weight has shape {weights[i].shape}; expected {tuple(lin.weight.shape)}")
                lin.weight.copy_(torch.from_numpy(weights[i]))
                lin.bias.copy_(torch.from_numpy(np.asarray(state[f"layers.{i}.bias"], dtype=np.float32)))
        est.net_ = net.to(resolve_device(est.device)).eval()
        for k in _STATS:
            setattr(est, k, np.asarray(state[k], dtype=np.float32))
        est.n_features_in_, est.n_targets_ = n_in, n_out
        est._y_1d = cls._read_y_1d(state)
        est.loss_curve_, est.val_scores_, est.best_epoch_ = [], [], -1
        return est
