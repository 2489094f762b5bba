"""The main job on a built-in default: train → sparsify → quantize → compile → simulate → estimate.

``run_pipeline_demo`` trains the digits CNN dense, prunes it to 50 % 8×8 block sparsity and
fine-tunes it (``tilesparse.sparsify.demo``), quantizes and compiles it for an AIE2 array through the
front door (an in-memory module source calibrated on training images; its program's provenance says
so), runs the program in the simulator on real test images — every layer bit-exact against the
PyTorch integer reference — and finally compiles ResNet50 dense and sparse on the same array to show what sparsity
buys at scale (estimate, lower bound, packed weight bytes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from tilesparse.hw import ArrayConfig, load_array

if TYPE_CHECKING:
    from tilesparse.program.provenance import Provenance

__all__ = ["PipelineDemo", "NetworkEstimate", "run_pipeline_demo", "estimate_network"]

# Test images simulated instruction by instruction (each is verified layer by layer).
DEFAULT_SIM_IMAGES = 16
# Calibration images for the activation exponents of the int8 program.
CALIB_IMAGES = 16


@dataclass(frozen=True)
class NetworkEstimate:
    network: str
    sparsity: float
    estimate_ms: float
    bound_ms: float
    packed_weight_fraction: float
    compile_s: float


@dataclass
class PipelineDemo:
    hw: ArrayConfig
    training: object  # tilesparse.sparsify.demo.DemoResult
    n_instructions: int
    digits_estimate_us: float
    digits_bound_us: float
    images_verified: int
    images_bit_exact: int
    float_correct: int
    int8_correct: int
    first_mismatch: str | None
    networks: list[NetworkEstimate] = field(default_factory=list)
    provenance: Provenance | None = None  # of the digits program: an in-memory module source


    @property
    def ok(self) -> bool:
        return self.images_bit_exact == self.images_verified


def estimate_network(network: str, hw: ArrayConfig, sparsity: float, seed: int = 0) -> NetworkEstimate:
    """Compile ``network`` (any model source; random weights for a zoo name; lowest-L2 ``sparsity`` of
    8×8 blocks zeroed, through the front door ``tilesparse.build``) and estimate it.

    Latency depends on shapes and masks, not on values, so the graph is compiled unquantized."""
    import time

    from tilesparse.build import compile_source
    from tilesparse.estimate.report import summarize

    t0 = time.process_time()
    s = summarize(compile_source(network, hw, sparsity=sparsity, block=(8, 8), quantized=False, seed=seed))
    return NetworkEstimate(network, sparsity, s.estimate_ms, s.bound_ms, s.weight_fraction,
                           time.process_time() - t0)


def run_pipeline_demo(*, seed: int = 0, sparsity: float = 0.5, block: tuple[int, int] = (8, 8),
                      array: str | ArrayConfig = "4x4", device: str = "cpu",
                      sim_images: int = DEFAULT_SIM_IMAGES, networks: tuple[str, ...] = ("resnet50",),
                      progress: bool = True, log=print) -> PipelineDemo:
    """Run the whole pipeline once; ``log`` receives one line per stage."""
    import torch

    from tilesparse.build import build_graph_from
    from tilesparse.compiler.pipeline import compile_graph
    from tilesparse.data.digits import load_digits_tensors
    from tilesparse.estimate.report import summarize
    from tilesparse.program.provenance import set_provenance
    from tilesparse.sim.oracle import verify
    from tilesparse.sparsify.demo import run_demo

    hw = load_array(array)
    log(f"1/4 train: digits CNN dense, then {sparsity:.0%} {block[0]}x{block[1]} blocks one-shot + fine-tune")
    trained = run_demo(seed=seed, sparsity=sparsity, block=block, device=device, progress=progress)
    model = trained.model.to("cpu").eval()
    data = load_digits_tensors(seed)

    log(f"2/4 quantize to int8 and compile for {hw.label} ({hw.rows}x{hw.cols} tiles)")
    calib = [data.x_train[i:i + 1].numpy() for i in range(CALIB_IMAGES)]
    built = build_graph_from(model, block=block, input_shape=(1, *data.x_test.shape[1:]), calibration=calib)
    graph = built.graph
    program = compile_graph(graph, hw)
    prov = built.provenance(hw.label, True)
    set_provenance(program, prov)
    digits = summarize(program)

    log(f"3/4 simulate {sim_images} test images instruction by instruction, verify every layer")
    exact = float_ok = int8_ok = 0
    mismatch = None
    for i in range(min(sim_images, len(data.y_test))):
        x, label = data.x_test[i:i + 1], int(data.y_test[i])
        rep = verify(program, graph, x.numpy(), progress=False)
        exact += rep.ok
        if not rep.ok and mismatch is None:
            mismatch = rep.summary()
        logits = np.concatenate([v.reshape(-1) for v in rep.sim.final.values()])
        int8_ok += int(np.argmax(logits)) == label
        with torch.no_grad():
            float_ok += int(model(x).argmax()) == label

    log(f"4/4 estimate {', '.join(networks)} dense vs {sparsity:.0%} sparse on {hw.label}")
    nets = [estimate_network(n, hw, s, seed) for n in networks for s in (0.0, sparsity)]
    return PipelineDemo(hw, trained, len(program.instrs), digits.estimate_ms * 1e3, digits.bound_ms * 1e3,
                        min(sim_images, len(data.y_test)), exact, float_ok, int8_ok, mismatch, nets, prov)
