"""The ONNX audio encoder (encoder + adapters) at lower precision: fp16, int8 or int4.

What is quantized, decided from measurements on the 4B encoder (benchmarks/results/quantize_4b.md):
- int8 and int4 quantize only MatMuls whose weight is a constant: every linear layer of the
  encoder, stem_proj and the adapter / DeepStack MLPs (99% of the parameters; the exported
  graph has no Gemm, its linear layers trace to MatMul + Add). MatMuls of two activations
  (attention scores) stay float.
- The three stem convolutions stay float: onnxruntime's ConvInteger ran slower than the float
  Conv on the 480-channel 3x3 stem, and they hold a tiny share of the weights. onnxruntime's
  quantize_dynamic defaults (ConvInteger, activation MatMuls, per-tensor weights) keep little
  of int8's speed-up over fp32; this recipe keeps most of it (both are the `int8-plain-ort`
  and `int8` rows of benchmarks/results/quantize_4b.md).
- LayerNorms, biases and positions are never quantized (weight-only schemes leave them float).
- int8 is optimum's ORTQuantizer with the target's AutoQuantizationConfig preset (arm64,
  avx512_vnni or avx2; quantize/presets.py), dynamic: onnxruntime's MatMulInteger, fused at
  load time into DynamicQuantizeMatMul, u8 activations quantized per tensor at run time, s8
  symmetric per-channel weights. u8 x s8 is the fast pair on ARM64 dot-product and x86
  VNNI/AMX kernels; u8 x u8 (the weights of optimum's avx2 preset, replaced here by s8) ran
  slower than u8 x s8, and 8-bit MatMulNBits no faster than fp32. The avx2 layout's
  `reduce_range` keeps weights in 7 bits so that AVX2 CPUs without VNNI cannot saturate
  their int16 accumulation: on a VNNI CPU it costs some row error (the `int8-7bit` row of
  benchmarks/results/quantize_4b.md), on an AVX2 one it has less error than 8 bits
  (benchmarks/results/int8_recipe.md). The presets are handed the MatMuls to quantize by
  name: ORTQuantizer, unlike onnxruntime's quantize_dynamic, would also quantize the
  attention-score MatMuls. The result is byte for byte the encoder that quantize_dynamic
  gave with the same settings (benchmarks/results/int8_recipe.md).
- int4 is onnxruntime's MatMulNBits: symmetric 4-bit blocks along K with an fp32 scale per
  block, accuracy level 4 (int8 activations in the kernel, its fast CPU path). On 50-row
  chunks it runs about as fast as fp32 on x86: int4 buys memory, not speed.
- fp16 converts every float tensor but keeps the graph's inputs and outputs fp32; it is meant
  for GPU execution providers, though the CPU provider runs it too. LayerNorms stay fp16:
  keeping them fp32 changed the row error (the `fp16` row of quantize_4b.md) by nothing
  that matters.
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import onnx
from onnx import TensorProto
from onnx.external_data_helper import load_external_data_for_model

from edge_runtime.errors import InputError

from .presets import INT8_LAYOUTS, Int8Layout

if TYPE_CHECKING:
    from optimum.onnxruntime import QuantizationConfig

INT4_ACCURACY_LEVEL = 4
# Blocks of 32 along K: on the 4B encoder, blocks of 128 ran faster but left clearly more row
# error than the 32-blocks' (the `int4` row of benchmarks/results/quantize_4b.md); the first
# size here that divides every K is used.
INT4_BLOCK_SIZES = (32, 16)
# Past this many bytes of weights a model is saved with an external data file (protobuf
# cannot hold 2 GB; the margin covers the graph itself).
EXTERNAL_DATA_BYTES = 1 << 30


@dataclass(frozen=True)
class EncoderFiles:
    files: list[str]  # the model first, then its external data file if any
    recipe: dict[str, Any]  # what was done, for the manifest


def weight_matmuls(model: onnx.ModelProto) -> dict[str, tuple[int, int]]:
    """MatMul node name -> (K, N) of its constant weight, for every MatMul that has one."""
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in shapes and len(shapes[node.input[1]]) == 2:
            found[node.name] = shapes[node.input[1]]
    return found


def tensor_bytes(tensor: TensorProto) -> int:
    """Stored size from the header alone: external data need not be read."""
    itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize


def replaced_weight_bytes(before: onnx.ModelProto, after: onnx.ModelProto) -> dict[str, int]:
    """Bytes of the initializers a quantizer removed and of those it added in their place:
    the size of exactly the matrices it quantized, before and after."""
    old = {t.name: t for t in before.graph.initializer}
    new = {t.name: t for t in after.graph.initializer}
    return {"matrices_fp32_bytes": sum(tensor_bytes(old[n]) for n in old.keys() - new.keys()),
            "matrices_quantized_bytes": sum(tensor_bytes(new[n]) for n in new.keys() - old.keys())}


def int4_block_size(model: onnx.ModelProto) -> int:
    """Blocks must tile K exactly, or the padding costs size (tiny test models have K = 48)."""
    ks = {k for k, _ in weight_matmuls(model).values()}
    return next(b for b in INT4_BLOCK_SIZES if all(k % b == 0 for k in ks))


def _save(model: onnx.ModelProto, path: Path) -> list[str]:
    weights = sum(tensor_bytes(t) for t in model.graph.initializer)
    if weights <= EXTERNAL_DATA_BYTES:
        onnx.save_model(model, str(path))
        return [path.name]
    data = path.name + ".data"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data, size_threshold=1024)
    return [path.name, data]


@contextmanager
def _quiet_onnxruntime() -> Iterator[None]:
    """onnxruntime's quantizers log every node at INFO and advise pre-processing on the root
    logger (this graph needs none: its weights are plain MatMul initializers); optimum warns
    that a bundle has no transformers config.json to copy beside the model."""
    loggers = [logging.getLogger(), logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer"),
               logging.getLogger("optimum.onnxruntime.quantization")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


# onnxruntime's quantizers and fp16 converter are handed models, never paths: given a path
# they write their shape-inferred copy beside it, in the input bundle. (optimum's ORTQuantizer
# takes a path, but loads it and hands onnxruntime the model.)

def int8_config(layout: Int8Layout, matmuls: list[str]) -> QuantizationConfig:
    """optimum's preset for the layout, dynamic, held to the measured recipe: only the named
    MatMuls (those with a constant weight), symmetric per-channel s8 weights."""
    from onnxruntime.quantization import QuantType
    from optimum.onnxruntime import AutoQuantizationConfig

    preset = getattr(AutoQuantizationConfig, layout.optimum_preset)
    # only avx2 takes reduce_range; arm64 and avx512_vnni fix it at False
    seven_bit = {"reduce_range": True} if layout.reduce_range else {}
    config = preset(is_static=False, use_symmetric_weights=True, per_channel=True,
                    operators_to_quantize=["MatMul"], nodes_to_quantize=matmuls, **seven_bit)
    # s8 weights on every layout: the avx2 preset's u8 weights ran slower, even on AVX2
    return dataclasses.replace(config, weights_dtype=QuantType.QInt8)


def _int8(source: Path, out: Path, layout: Int8Layout, matmuls: list[str]) -> list[str]:
    from optimum.onnxruntime import ORTQuantizer

    quantizer = ORTQuantizer.from_pretrained(source.parent, file_name=source.name)
    # optimum writes its ort_config.json beside the model: a scratch folder keeps it out of
    # the bundle. A quarter of the fp32 size: one file for any MOSS-Audio encoder.
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".int8-") as scratch:
        quantizer.quantize(int8_config(layout, matmuls), scratch, file_suffix=None)
        (Path(scratch) / f"{source.stem}.onnx").replace(out)
    return [out.name]


def _int4(source: Path, block_size: int) -> onnx.ModelProto:
    from onnxruntime.quantization.matmul_nbits_quantizer import (DefaultWeightOnlyQuantConfig,
                                                                 MatMulNBitsQuantizer)

    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, bits=4,
                                          accuracy_level=INT4_ACCURACY_LEVEL, op_types_to_quantize=("MatMul",))
    quantizer = MatMulNBitsQuantizer(onnx.load(str(source)), algo_config=config)
    quantizer.process()
    return quantizer.model.model


def _fp16(source: Path) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    # shapes inferred on the graph alone (a proto past 2 GB cannot be), then the weights loaded
    model = onnx.shape_inference.infer_shapes(onnx.load(str(source), load_external_data=False))
    load_external_data_for_model(model, str(source.parent))
    return convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)


def quantize_encoder(source_dir: Path, source_files: list[str], out_dir: Path, encoder_type: str,
                     int8_layout: Int8Layout = INT8_LAYOUTS["vnni"]) -> EncoderFiles:
    """Write the encoder whose files (model first) are `source_files` in `source_dir` into
    `out_dir` at `encoder_type`, under the same model file name; int8 weights laid out for
    `int8_layout`'s CPUs."""
    if encoder_type == "fp32":
        for name in source_files:
            shutil.copyfile(source_dir / name, out_dir / name)
        return EncoderFiles(list(source_files), {"scheme": "fp32 (copied)"})
    source, out = source_dir / source_files[0], out_dir / source_files[0]
    header = onnx.load(str(source), load_external_data=False)  # shapes only: cheap at any size
    with _quiet_onnxruntime():
        if encoder_type == "int8":
            files = _int8(source, out, int8_layout, list(weight_matmuls(header)))
            recipe = {"scheme": "int8 dynamic (MatMulInteger)",
                      "quantizer": f"optimum ORTQuantizer, AutoQuantizationConfig.{int8_layout.optimum_preset}",
                      "weights": "s8 symmetric per output channel",
                      "activations": "u8 per tensor, computed at run time", "reduce_range": int8_layout.reduce_range}
        elif encoder_type == "int4":
            block = int4_block_size(header)
            files = _save(_int4(source, block), out)
            recipe = {"scheme": "int4 MatMulNBits",
                      "weights": f"4-bit symmetric blocks of {block} along K, fp32 scales",
                      "block_size": block, "accuracy_level": INT4_ACCURACY_LEVEL}
        elif encoder_type == "fp16":
            files = _save(_fp16(source), out)
            recipe = {"scheme": "fp16 (inputs and outputs stay fp32)"}
        else:
            raise InputError(f"encoder type {encoder_type!r} not one of fp32, fp16, int8, int4")
    if encoder_type in ("int8", "int4"):
        recipe |= {"quantized": f"MatMul with constant weights ({len(weight_matmuls(header))} matrices)",
                   "kept_float": ["Conv (stem)", "LayerNormalization", "attention-score MatMuls", "biases"],
                   **replaced_weight_bytes(header, onnx.load(str(out), load_external_data=False))}
    return EncoderFiles(files, recipe)
