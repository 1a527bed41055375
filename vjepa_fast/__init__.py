"""vjepa_fast: a fast, faithful V-JEPA 2 (encoder, predictor, training, planning)."""
from vjepa_fast.config import PRESETS, VJEPA2Config
from vjepa_fast.model import VJEPA2Model, VJEPA2Output, PredictorOutput
from vjepa_fast.classifier import VJEPA2ClassifierConfig, VJEPA2ForVideoClassification, VideoClassifierOutput
from vjepa_fast.video import ClipSampling, ProcessorConfig, VideoProcessor, load_clip
from vjepa_fast.optimize import optimize
from vjepa_fast.ac_model import ACConfig, ACPredictor

__all__ = ["PRESETS", "VJEPA2Config", "VJEPA2Model", "VJEPA2Output", "PredictorOutput",
           "VJEPA2ClassifierConfig", "VJEPA2ForVideoClassification", "VideoClassifierOutput",
           "ClipSampling", "ProcessorConfig", "VideoProcessor", "load_clip", "optimize",
           "ACConfig", "ACPredictor"]
