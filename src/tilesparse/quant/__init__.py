"""int8 quantization with power-of-two scales and the integer reference (docs/quantization.md)."""

from tilesparse.quant.quantize import (
    QuantizationError,
    calibrate,
    plan_exponents,
    quantize,
    requant_shifts,
)
from tilesparse.quant.reference import IntegerReference, quantize_input
from tilesparse.quant.sdq_graph import SDQConfig, sdq_layers

__all__ = [
    "QuantizationError", "calibrate", "plan_exponents", "quantize", "requant_shifts",
    "IntegerReference", "quantize_input", "SDQConfig", "sdq_layers",
]
