"""brainstore.fitting.decoding: decoding models from responses to store tables, and captions.

What decoders read (voxel selections, response matrices), ridge decoders (one per subject, Ray
tasks), adaptors (one network over all subjects, Ray Train), the outputs over both kinds (decoding,
whole-table top-k, retrieval scores), the captioner, and :func:`fit_decoder`, the one entry point
that fits what a :class:`~brainstore.fitting.DecoderSpec` says.
"""

from ..._lazy import lazy_names

from ._adaptor import AdaptorRun, fit_adaptor, train_adaptor
from ._adaptor_model import ADAPTOR_KIND, AdaptorModel
from ._captioner import CAPTIONER_KIND, Captioner, lm_info, train_captioner
from ._fit_decoder import add_store_retrieval, check_decoder_specs, fit_decoder
from ._inputs import check_decoding_inputs, delay_responses, response_matrix, select_voxels, validation_cut
from ._outputs import decode_subject, decoder_records, decoding_models, evaluate_decoders, store_top_k
from ._ridge_decoders import DECODER_ALPHAS, DECODER_KIND, DecodeRun, Decoder, decoder_name, fit_decoders
from ._scores import retrieved_caption_metrics, retrieved_captions, row_cosine
from ._tiny_lm import make_tiny_lm

__all__ = [
    "fit_decoder", "add_store_retrieval", "check_decoder_specs",
    # inputs
    "select_voxels", "response_matrix", "delay_responses", "check_decoding_inputs", "validation_cut",
    # ridge decoders
    "fit_decoders", "Decoder", "DecodeRun", "decoder_name", "DECODER_KIND", "DECODER_ALPHAS",
    # adaptors (the network and its losses need torch: loaded on first access)
    "fit_adaptor", "train_adaptor", "AdaptorModel", "AdaptorRun", "ADAPTOR_KIND",
    "AdaptorNet", "clip_loss", "soft_clip_loss", "mixco_loss", "regression_loss", "neighborhood_clustering_loss",
    "entropy_separation_loss",
    # outputs
    "decoding_models", "decoder_records", "decode_subject", "store_top_k", "evaluate_decoders",
    "retrieved_captions", "retrieved_caption_metrics", "row_cosine",
    # captions
    "train_captioner", "Captioner", "make_tiny_lm", "lm_info", "CAPTIONER_KIND",
]

#: Public names whose module imports torch: loaded on first access (PEP 562).
_LAZY = {name: "._adaptor_net" for name in (
    "AdaptorNet", "clip_loss", "soft_clip_loss", "mixco_loss", "regression_loss", "neighborhood_clustering_loss",
    "entropy_separation_loss")}


__getattr__ = lazy_names(__name__, _LAZY, globals())
