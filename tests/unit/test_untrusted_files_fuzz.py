"""Fuzz: thousands of malformed files, headers, configs, gate and layer-index strings, from a fixed seed.

Every case must either succeed on something consistent or raise FlexIPError with one sentence
(one line, ending in '.') that names the file or widget; never another exception, never more
than CASE_SECONDS, and neither one case nor the whole run may grow peak memory by PEAK_GROWTH_BYTES,
each peak read from its own start (tests/unit/peak_memory.py: the resident set, torch's tensors
included). The worst case's peak-memory growth is logged and stored as a user property.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import mmap
import random
import struct
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
import torch

from flexip_model import FlexIPAdapter, FlexIPConfig, FlexIPError, LayerSpec, checkpoint, config_for
from flexip_model.flux import ArcFaceIRSE50, load_identity_projection, load_ir_se50
from flexip_model.gate_schedule import MAX_KEYFRAMES, MAX_LAYER_INDICES, parse_keyframes, parse_layer_indices
from flexip_model.gate_sweep import MAX_SWEEP_GAMMAS, parse_gammas
from flexip_model.ip_adapter import describe, open_file
from tests.unit.crafted_files import time_limit, write_raw
from tests.unit.peak_memory import PeakMeter, ResidentPeak, peak_meter
from tools.fixtures.infiniteyou_files import PROJECTION_SHAPES, write_legacy_torch_file
from tools.fixtures.ip_adapter_files import layer_shapes, linear_projection, mlp_projection, resampler_projection

pytestmark = pytest.mark.unit
log = logging.getLogger(__name__)

SEED = 14
# A refusal reads a header of at most a few MB; a consistent tiny file loads in ~0.1 s. 5 s per
# case catches a hang (a file with a huge declared size once ran for minutes) with room for a loaded 2-core machine.
CASE_SECONDS = 5.0
# The largest input here is a ~1 MB config or header; 300 MB growth would mean something a file
# chose was allocated (the server climbed past 4.5 GB).
PEAK_GROWTH_BYTES = 300 * 1024 * 1024
ODD_VALUES = (
    10**9,
    10**30,
    2**40,
    14_000_000,
    -1,
    0,
    1,
    2,
    3,
    7,
    64,
    65,
    1024,
    1025,
    8193,
    1.5,
    -0.0,
    True,
    False,
    None,
    "12",
    "",
    [],
    {},
    [1, 2],
    {"a": 1},
    "x" * 5000,
)
DTYPES = ("F32", "F16", "BF16", "F64", "I32", "U8", "BOOL", "F8_E4M3", "Q4", "", 32, None, ["F32"])


class Budget:
    """Runs cases under the time limit; tracks the slowest case and the largest peak-memory growth."""

    def __init__(self, meter: PeakMeter) -> None:
        self.meter = meter
        self.cases = 0
        self.slowest = (0.0, "")
        self.worst_growth = (0, "")
        self.start = self.run_peak = meter.reset()

    def run(self, label: str, action: Callable[[], object], names: tuple[str, ...]) -> object | None:
        before = self.meter.reset()
        began = time.perf_counter()
        try:
            with time_limit(CASE_SECONDS):
                result = action()
        except FlexIPError as error:
            message = str(error)
            assert "\n" not in message and message.endswith("."), f"{label}: {message!r}"
            assert any(name in message for name in names), f"{label}: {names} not in {message!r}"
            result = None
        except Exception as error:
            raise AssertionError(f"{label}: {type(error).__name__}: {str(error)[:300]}") from error
        self.cases += 1
        elapsed, peak = time.perf_counter() - began, self.meter.peak()
        self.slowest = max(self.slowest, (elapsed, label))
        self.worst_growth = max(self.worst_growth, (peak - before, label))
        self.run_peak = max(self.run_peak, peak)
        return result

    def report(self, name: str, record: Callable[[str, object], None]) -> None:
        """Log and record the worst case; AssertionError if one case or the run grew past PEAK_GROWTH_BYTES."""
        total = self.run_peak - self.start
        log.warning(
            "%s: %d cases, slowest %.3f s (%s), worst case %s growth %.1f MiB (%s), whole run %.1f MiB",
            name,
            self.cases,
            self.slowest[0],
            self.slowest[1],
            self.meter.name,
            self.worst_growth[0] / 2**20,
            self.worst_growth[1],
            total / 2**20,
        )
        record(f"{name}_worst_peak_memory_growth_bytes", self.worst_growth[0])
        assert max(total, self.worst_growth[0]) < PEAK_GROWTH_BYTES, (
            f"{name}: {self.meter.name} grew by {self.worst_growth[0] / 2**20:.0f} MiB in one case "
            f"({self.worst_growth[1][:120]}) and by {total / 2**20:.0f} MiB over the run, over the "
            f"{PEAK_GROWTH_BYTES / 2**20:.0f} MiB bound: something a file chose was allocated or kept."
        )


@pytest.fixture
def budget() -> Iterator[Budget]:
    with peak_meter() as meter:
        yield Budget(meter)


@pytest.fixture(scope="module")
def valid_file(tmp_path_factory) -> Path:
    """A consistent FlexIP file of ~100 KB, so 800 mutated copies cost little disk time."""
    path = tmp_path_factory.mktemp("fuzz") / "valid.safetensors"
    layers = (LayerSpec("input_1_0", 16, 2), LayerSpec("output_3_0", 32, 2))
    config = dataclasses.replace(
        config_for("sd15", layers=layers, tiny=True),
        context_dim=16,
        clip_embed_dim=8,
        dino_dim=8,
        personalization_heads=2,
    )
    torch.manual_seed(0)
    checkpoint.save(path, FlexIPAdapter(config))
    checkpoint.load(path)  # first-use imports of torch stay out of the timed cases
    return path


# FlexIP configs ---------------------------------------------------------------------------------


def _mutated_config(rng: random.Random, config: dict) -> object:
    config = json.loads(json.dumps(config))
    for _ in range(rng.randint(1, 3)):
        field = rng.choice(sorted(config))
        roll = rng.random()
        if roll < 0.55:
            config[field] = rng.choice(ODD_VALUES)
        elif roll < 0.65:
            del config[field]
        elif roll < 0.7:
            config[f"extra_{rng.randint(0, 9)}"] = 1
        elif roll < 0.85 and isinstance(config.get("layers"), list):
            layers = config["layers"]
            choice = rng.randint(0, 5)
            if choice == 0:
                config["layers"] = [dict(layers[0], key=f"input_{i}_0") for i in range(rng.choice((1100, 3)))]
            elif choice == 1 and layers:
                layers[0][rng.choice(("key", "inner_dim", "heads"))] = rng.choice((*ODD_VALUES, "input_99999999_0"))
            elif choice == 2:
                layers.append(rng.choice(ODD_VALUES))
            elif choice == 3 and layers:
                layers.append(dict(layers[0]))  # duplicate key
            elif choice == 4:
                config["layers"] = []
            else:
                config["layers"] = "[" * rng.randint(1, 50)
        else:
            config["format_version"] = rng.choice((1, 2, 0, "1", None))
    roll = rng.random()
    if roll < 0.05:
        return "[" * rng.choice((10, 1000, 100_000))
    if roll < 0.1:
        return json.dumps(config)[: rng.randint(0, 200)]
    if roll < 0.12:
        return json.dumps(config) + " " * (2 * 1024 * 1024)
    return config


def _random_consistent_config(rng: random.Random) -> FlexIPConfig:
    heads = rng.choice((1, 2))
    layers = tuple(
        LayerSpec(f"{block}_{i}_0", 8 * heads * rng.randint(1, 3), heads)
        for i, block in enumerate(rng.sample(("input", "middle", "output"), rng.randint(1, 3)))
    )
    return FlexIPConfig(
        base="sd15",
        context_dim=8 * rng.randint(1, 4) * 2,
        clip_embed_dim=rng.randint(1, 16),
        dino_dim=rng.randint(1, 16),
        dino_resolution=14 * rng.randint(1, 20),
        preservation_width=8 * heads,
        preservation_heads=heads,
        num_queries=rng.randint(1, 4),
        query_depth=rng.randint(1, 2),
        cls_tokens=rng.randint(1, 3),
        cls_depth=rng.randint(1, 2),
        personalization_kv_tokens=rng.randint(1, 3),
        personalization_depth=rng.randint(1, 2),
        personalization_heads=2,
        ffn_mult=rng.randint(1, 4),
        gate_mode=rng.choice(("output", "token")),
        layers=layers,
    )


def test_fuzzed_flexip_configs_load_or_are_refused_in_one_sentence(valid_file, tmp_path, budget, record_property):
    rng = random.Random(SEED)
    raw = valid_file.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header, data = json.loads(raw[8 : 8 + length]), raw[8 + length :]
    base = json.loads(header["__metadata__"]["flexip"])
    for case in range(800):
        path = tmp_path / f"config_{case}.safetensors"
        if case % 40 == 0:  # a consistent file of random sizes must load
            config = _random_consistent_config(rng)
            checkpoint.save(path, FlexIPAdapter(config))
            adapter = budget.run(f"consistent {case}", partial(checkpoint.load, path), (path.name,))
            assert adapter is not None and adapter.config == config, f"consistent {case} was refused"
            continue
        mutated = _mutated_config(rng, base)
        text = mutated if isinstance(mutated, str) else json.dumps(mutated)
        # the valid file's tensors under the mutated config, written straight into the header
        entries = {name: entry for name, entry in header.items() if name != "__metadata__"}
        if rng.random() < 0.2:
            name = rng.choice(sorted(entries))
            entries[name + rng.choice(("", ".x", "_renamed"))] = {
                "dtype": "F32",
                "shape": [0],
                "data_offsets": [len(data), len(data)],
            }
            if rng.random() < 0.5:
                del entries[name]
        write_raw(path, {"__metadata__": {"flexip": text}, **entries}, data)
        result = budget.run(f"config {case}: {text[:200]}", partial(checkpoint.load, path), (path.name,))
        if result is not None:  # only a config that still describes these tensors may load
            assert len(result.state_dict()) == len(entries)
        path.unlink()
    budget.report("flexip_configs", record_property)


# raw safetensors headers ------------------------------------------------------------------------


def _shape(rng: random.Random) -> object:
    roll = rng.random()
    if roll < 0.6:
        return [rng.randint(0, 4) for _ in range(rng.randint(0, 3))]
    if roll < 0.8:
        return [rng.choice((0, 1, -1, 2**31, 2**63, 10**30)) for _ in range(rng.randint(1, 10))]
    return rng.choice((*ODD_VALUES, [[1]], [1.5], ["2"], [True]))


def _header(rng: random.Random) -> tuple[dict, int]:
    header: dict = {}
    offset = 0
    for number in range(rng.randint(0, 6)):
        name = rng.choice(
            (
                f"t{number}",
                "",
                "ä" * 3,
                "x" * 10_000,
                "layers.input_1_0.pres.to_k.weight",
                "image_proj.proj.weight",
                f"ip_adapter.{number}.to_k_ip.weight",
            )
        )
        dtype, shape = rng.choice(DTYPES), _shape(rng)
        try:
            size = 1
            for dim in shape:
                size *= dim
            size *= {"F64": 8, "F32": 4, "I32": 4}.get(dtype, 2)
            size = size if 0 <= size < 4096 else rng.randint(0, 64)
        except TypeError:
            size = rng.randint(0, 64)
        offsets = [offset, offset + size] if rng.random() < 0.8 else [rng.choice(ODD_VALUES) for _ in range(2)]
        offset += size if isinstance(size, int) else 0
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": offsets}
        if rng.random() < 0.1:
            del header[name][rng.choice(("dtype", "shape", "data_offsets"))]
    roll = rng.random()
    if roll < 0.3:
        header["__metadata__"] = {"flexip": rng.choice(("{}", "[" * 200, json.dumps({"format_version": 1}), "null"))}
    elif roll < 0.4:
        header["__metadata__"] = rng.choice(ODD_VALUES)
    return header, offset


def test_fuzzed_safetensors_headers_are_read_or_refused_in_one_sentence(valid_file, tmp_path, budget, record_property):
    rng = random.Random(SEED + 1)
    valid_bytes = valid_file.read_bytes()
    for case in range(700):
        path = tmp_path / f"header_{case}.safetensors"
        roll = rng.random()
        if roll < 0.15:  # a valid file cut or overwritten somewhere
            data = bytearray(valid_bytes[: rng.randint(0, len(valid_bytes))])
            if data and rng.random() < 0.5:
                data[rng.randrange(len(data))] = rng.randrange(256)
            path.write_bytes(bytes(data))
        elif roll < 0.25:  # the length field lies
            body = json.dumps(_header(rng)[0]).encode()
            length = rng.choice((0, 1, len(body) - 1, len(body) + 1, 2**31, 2**63, 2**64 - 1))
            path.write_bytes(struct.pack("<Q", length) + body)
        elif roll < 0.3:
            path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randint(0, 64))))
        else:
            header, data_size = _header(rng)
            body = json.dumps(header).encode()
            if rng.random() < 0.1:
                body = body[: rng.randint(0, len(body))]
            write_raw(path, body, bytes(max(0, data_size + rng.choice((0, 0, 0, -1, 1, 7)))))
        for check in (checkpoint.validate, open_file, checkpoint.read_unet_cross_attention):
            budget.run(f"header {case} {check.__name__}", partial(check, path), (path.name,))
        path.unlink()
    budget.report("safetensors_headers", record_property)


# IP-Adapter shapes and .bin files ---------------------------------------------------------------


def _ip_adapter_shapes(rng: random.Random) -> dict[str, tuple[int, ...]]:
    kind = rng.randint(0, 2)
    projection = (
        linear_projection(4, 8, tokens=2)
        if kind == 0
        else mlp_projection(4, 8)
        if kind == 1
        else resampler_projection(4, 8, width=8, heads=1, depth=2, queries=2)
    )
    shapes = {f"image_proj.{name}": shape for name, shape in projection.items()}
    shapes.update({f"ip_adapter.{name}": shape for name, shape in layer_shapes((64,) * rng.randint(1, 3), 8).items()})
    for _ in range(rng.randint(1, 3)):
        roll, name = rng.random(), rng.choice(sorted(shapes))
        sizes = (0, 1, 3, 8, 64, 65, 1025, 8193, 2**40, 10**12)
        if roll < 0.5:
            shape = list(shapes[name])
            shape[rng.randrange(len(shape))] = rng.choice(sizes)
            shapes[name] = tuple(shape)
        elif roll < 0.6:
            shapes[name] = shapes[name][:-1] or (rng.choice(sizes),) * 3
        elif roll < 0.7:
            del shapes[name]
        elif roll < 0.8:
            shapes[
                rng.choice(
                    (
                        "ip_adapter.99999999.to_k_ip.weight",
                        "image_proj.layers.70.0.to_q.weight",
                        "image_proj.latents",
                        "ip_adapter.1.lora.weight",
                        "image_proj.proj.3.weight",
                    )
                )
            ] = (rng.choice(sizes), rng.choice(sizes))
        else:
            for number in range(rng.choice((2000, 600, 3))):
                for kind_name in ("k", "v"):
                    shapes[f"ip_adapter.{2 * number + 1}.to_{kind_name}_ip.weight"] = (64, 8)
    return shapes


def test_fuzzed_ip_adapter_shapes_and_bin_files_are_refused_in_one_sentence(tmp_path, budget, record_property):
    rng = random.Random(SEED + 2)
    for case in range(450):
        shapes = _ip_adapter_shapes(rng)
        name = f"fuzz_{case}.safetensors"
        budget.run(f"ip-adapter shapes {case}", partial(describe, name, shapes), (name,))
    values = (
        torch.zeros(2),
        torch.zeros(2, dtype=torch.int32),
        torch.zeros((1,) * 9),
        3,
        "x",
        None,
        [torch.zeros(1)],
        {"a": torch.zeros(1)},
        torch.full((2,), float("nan")),
    )
    for case in range(100):
        path = tmp_path / f"fuzz_{case}.bin"
        parts_ = {
            part: {
                rng.choice(("proj.weight", "norm.weight", 7, "")): rng.choice(values) for _ in range(rng.randint(0, 3))
            }
            for part in ("image_proj", "ip_adapter")
        }
        data: object = parts_ if rng.random() < 0.7 else rng.choice((parts_["image_proj"], [1, 2], torch.zeros(1)))
        torch.save(data, str(path))
        if rng.random() < 0.3:
            path.write_bytes(path.read_bytes()[: rng.randint(0, path.stat().st_size)])
        budget.run(f"bin {case}", partial(open_file, path), (path.name,))
    budget.report("ip_adapter_files", record_property)


# InfiniteYou's identity files: the projection .bin and facexlib's IR-SE50 .pth -------------------


def _infiniteyou_state(rng: random.Random, names: list[str], values: tuple) -> dict:
    state = {rng.choice(names): rng.choice(values) for _ in range(rng.randint(0, 6))}
    if rng.random() < 0.2:
        state[rng.choice((7, "", "x" * 300, "head.weight"))] = torch.zeros(1)
    return state


def test_fuzzed_infiniteyou_files_are_refused_in_one_sentence(tmp_path, budget, record_property):
    """Both loaders on pickles in torch's zip and pre-1.6 layouts (torch's own writer and one that lies
    about storage sizes), nested or flat, cut or with a byte overwritten."""
    rng = random.Random(SEED + 5)
    with torch.device("meta"):
        names = list(ArcFaceIRSE50().state_dict()) + [f"image_proj.{name}" for name in PROJECTION_SHAPES]
    values = (
        torch.zeros(2),
        torch.zeros(64, 3, 3, 3, dtype=torch.float16),
        torch.zeros(2, dtype=torch.int64),
        torch.tensor(3),
        torch.zeros((1,) * 9),
        torch.full((3,), float("inf")),
        3,
        "x",
        None,
        [torch.zeros(1)],
        {"a": torch.zeros(1)},
    )
    for case in range(150):
        path = tmp_path / rng.choice(("recognition_arcface_ir_se50.pth", "image_proj_model.bin", f"fuzz_{case}.pt"))
        state = _infiniteyou_state(rng, names, values)
        if any(name.startswith("image_proj.") for name in state if isinstance(name, str)) and rng.random() < 0.7:
            state = {"image_proj": {str(name).removeprefix("image_proj."): value for name, value in state.items()}}
        layout = rng.choice(("zip", "legacy", "by hand"))
        tensors_only = all(isinstance(value, torch.Tensor) and value.dtype != torch.int64 for value in state.values())
        if layout == "by hand" and tensors_only:
            lie = rng.choice(((None, None), (rng.choice((10**9, 2**40, 2**62)), None), (None, rng.choice((0, 10**12)))))
            write_legacy_torch_file(path, state, *lie)
        else:
            torch.save(state, str(path), _use_new_zipfile_serialization=layout == "zip")
        roll, data = rng.random(), bytearray(path.read_bytes())
        if roll < 0.2:
            path.write_bytes(bytes(data[: rng.randint(0, len(data))]))
        elif roll < 0.35 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
            path.write_bytes(bytes(data))
        for load in (load_ir_se50, load_identity_projection):
            budget.run(f"{layout} {case} {load.__name__}", partial(load, path), (path.name,))
        path.unlink()
    budget.report("infiniteyou_files", record_property)


# gate, sweep and layer-index strings ------------------------------------------------------------

TOKENS = (
    "0",
    "1",
    "0.5",
    "0.25",
    "nan",
    "inf",
    "-inf",
    "1e999",
    "-0",
    "1e-400",
    "0x10",
    "½",
    "٣",
    "",
    "abc",
    "1_0",
    " ",
    "\t",
    "\r",
    "1e308",
    "-1",
    "2",
    "0:1",
    "1:0",
    "0.5:0.3",
    "::",
    ":",
    "0:nan",
    "1:inf",
)
SEPARATORS = (",", "\n", ", ", ":", ";", "\r\n", " ")


def _gate_text(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.03:
        return ", ".join(f"{i / 400}:0.5" for i in range(MAX_KEYFRAMES + rng.randint(1, 100)))
    if roll < 0.05:
        return "0:" + "1" * 100_000
    return "".join(rng.choice(TOKENS) + rng.choice(SEPARATORS) for _ in range(rng.randint(0, 12)))


INDEX_TOKENS = ("0", "1", "5", "69", "1023", "1024", "-1", "+2", "1_0", "٣", " 7 ", "1.0", "0x1", "1e3", "", "9" * 5000)
INDEX_SEPARATORS = (",", "\n", ", ", "\r\n", ";")


def _index_text(rng: random.Random) -> str:
    if rng.random() < 0.05:
        return ",".join(str(i) for i in range(MAX_LAYER_INDICES + rng.randint(1, 100)))
    return "".join(rng.choice(INDEX_TOKENS) + rng.choice(INDEX_SEPARATORS) for _ in range(rng.randint(1, 12)))


def test_fuzzed_gate_sweep_and_layer_index_strings_parse_or_are_refused_in_one_sentence(budget, record_property):
    rng, index_rng = random.Random(SEED + 3), random.Random(SEED + 4)
    for _case in range(500):
        text = _gate_text(rng)
        keyframes = budget.run(
            f"keyframes {text[:80]!r}",
            partial(parse_keyframes, text, "FlexIPGateSchedule keyframes"),
            ("FlexIPGateSchedule keyframes",),
        )
        if keyframes is not None:
            assert 1 <= len(keyframes) <= MAX_KEYFRAMES
            assert all(0.0 <= p <= 1.0 and 0.0 <= g <= 1.0 for p, g in keyframes)
            assert [p for p, _ in keyframes] == sorted({p for p, _ in keyframes})
        gammas = budget.run(
            f"sweep {text[:80]!r}", partial(parse_gammas, text, "FlexIPGateSweep values"), ("FlexIPGateSweep values",)
        )
        if gammas is not None:
            assert 1 <= len(gammas) <= MAX_SWEEP_GAMMAS and all(0.0 <= g <= 1.0 for g in gammas)
        index_text = text if index_rng.random() < 0.3 else _index_text(index_rng)
        indices = budget.run(
            f"layer indices {index_text[:80]!r}",
            partial(parse_layer_indices, index_text, "FlexIPGateSchedule layer_indices"),
            ("FlexIPGateSchedule layer_indices",),
        )
        if indices is not None:
            assert len(indices) <= MAX_LAYER_INDICES and all(type(index) is int for index in indices)
    budget.report("gate_strings", record_property)


# the memory bound itself ------------------------------------------------------------------------

PLANTED_BYTES = PEAK_GROWTH_BYTES + 64 * 1024 * 1024


def _kept_memory(meter: PeakMeter) -> object:
    """PLANTED_BYTES that stay alive. For the resident-set meter, pages fresh from the kernel, every one
    touched: a bytes object may be carved from heap the process already holds (after a full suite it
    often is), which no resident-set figure can see. For tracemalloc, a Python object it traces."""
    if not isinstance(meter, ResidentPeak):
        return b"x" * PLANTED_BYTES
    region = mmap.mmap(-1, PLANTED_BYTES)
    for offset in range(0, PLANTED_BYTES, mmap.PAGESIZE):
        region[offset] = 1
    return region


def test_memory_bound_fails_a_case_that_keeps_memory(budget):
    kept = []
    budget.run("planted leak", lambda: kept.append(_kept_memory(budget.meter)), ("",))
    with pytest.raises(AssertionError, match=r"grew by \d+ MiB in one case \(planted leak\)"):
        budget.report("planted_leak", lambda *_: None)


def _tensor_on_fresh_pages() -> int:
    """A PLANTED_BYTES tensor filled through torch on pages fresh from the kernel, then freed: a plain
    torch.ones may reuse memory the process already holds after a full suite (see _kept_memory)."""
    region = mmap.mmap(-1, PLANTED_BYTES)
    tensor = torch.frombuffer(region, dtype=torch.uint8).fill_(1)
    filled = tensor.numel()
    del tensor
    region.close()
    return filled


def test_memory_bound_fails_a_case_whose_tensor_peaks_and_is_freed(budget):
    if not isinstance(budget.meter, ResidentPeak):
        pytest.skip("tracemalloc, the fallback meter, does not see torch's tensor storage")
    budget.run("planted tensor", _tensor_on_fresh_pages, ("",))
    with pytest.raises(AssertionError, match=r"grew by \d+ MiB in one case \(planted tensor\)"):
        budget.report("planted_tensor", lambda *_: None)
