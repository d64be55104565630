"""Adapter (LoRA / QLoRA) training and serving, shared by the adapter strategies (not a strategy itself).

``params`` (config options) -> ``data`` (rows -> token ids + completion mask) -> ``quantized`` (training
base) -> ``trainer`` (trl SFTTrainer, training record) -> ``cache`` (content-addressed adapter folders)
-> ``attach`` (``AdapterStrategy``: train/prepare entry points, attach through the backend).
"""

from strategies.adapters.attach import AdapterStrategy
from strategies.adapters.params import AdapterParams, TrainParams
from strategies.adapters.trainer import TrainResult, train_adapter

__all__ = ["AdapterParams", "AdapterStrategy", "TrainParams", "TrainResult", "train_adapter"]
