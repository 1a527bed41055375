"""vjepa_fast: a fast, faithful V-JEPA 2 (encoder, predictor, training, planning).

A drop-in for transformers' V-JEPA 2 classes under their names: swap `from transformers import`
for `from vjepa_fast import` (AutoModel, AutoModelForVideoClassification, AutoVideoProcessor,
VJEPA2Config, VJEPA2Model, VJEPA2ForVideoClassification, VJEPA2VideoProcessor)."""
from vjepa_fast.config import PRESETS, VJEPA2Config
from vjepa_fast.model import VJEPA2Model, VJEPA2Output, PredictorOutput
from vjepa_fast.classifier import VJEPA2ForVideoClassification, VideoClassifierOutput
from vjepa_fast.video import ClipSampling, ProcessorConfig, VideoBatch, VideoProcessor, load_clip
from vjepa_fast.auto import AutoModel, AutoModelForVideoClassification, AutoVideoProcessor
from vjepa_fast.optimize import optimize
from vjepa_fast.ac_model import ACConfig, ACPredictor

VJEPA2VideoProcessor = VideoProcessor  # transformers' name

__all__ = ["PRESETS", "VJEPA2Config", "VJEPA2Model", "VJEPA2Output", "PredictorOutput",
           "VJEPA2ForVideoClassification", "VideoClassifierOutput",
           "ClipSampling", "ProcessorConfig", "VideoBatch", "VideoProcessor", "VJEPA2VideoProcessor", "load_clip",
           "AutoModel", "AutoModelForVideoClassification", "AutoVideoProcessor", "optimize",
           "ACConfig", "ACPredictor"]
