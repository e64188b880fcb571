"""Issue 14: crafted model files are refused with one sentence, quickly, before anything is allocated.

Each test is one failure measured on a real server (a prompt that ran for minutes, a 5.4 PB
allocation, a raw RuntimeError or RecursionError, a uniform image from NaN weights) or a
header bound of the shared safetensors reader.
"""

from __future__ import annotations

import math
import zipfile
from functools import partial
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from flexip_model import checkpoint
from flexip_model.config import SIZE_BOUNDS, LayerSpec
from flexip_model.ip_adapter import open_file
from flexip_model.safetensors_header import MAX_TENSORS
from tests.support.assertions import assert_one_sentence
from tests.unit.crafted_files import bounded_refusal, parts, valid_flexip, with_config, write_raw
from tests.unit.flexip_unit_helpers import load_one_file
from tools.fixtures.ip_adapter_files import (
    ip_adapter_shapes,
    linear_projection,
    random_weights,
    resampler_projection,
    write_ip_adapter,
)

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def valid_file(tmp_path_factory) -> Path:
    path = valid_flexip(tmp_path_factory.mktemp("untrusted") / "valid.safetensors")
    checkpoint.load(path)  # torch imports some modules on first use: keep that out of the timed refusals
    return path


@pytest.mark.parametrize(
    "field,value,accepted",
    [
        ("query_depth", 10**9, "1..64"),  # issue: minutes of meta modules, POST /interrupt did not stop it
        ("dino_resolution", 14_000_000, "14..1036"),  # issue: the encoder asked for 5.4 PB
        ("preservation_width", 2**40, "1..8192"),  # issue: raw "Storage size calculation overflowed"
        ("context_dim", -768, "1..8192"),
        ("personalization_depth", 0, "1..64"),
    ],
)
def test_config_size_outside_its_bound_is_refused_naming_field_and_range(valid_file, tmp_path, field, value, accepted):
    # no tensors match the crafted config: the bound must refuse it before shapes are compared
    path = with_config(valid_file, tmp_path / "evil.safetensors", tensors={"x": torch.zeros(1)}, **{field: value})
    for check in (checkpoint.read_config, checkpoint.validate, checkpoint.load):
        message = bounded_refusal(partial(check, path))
        assert_one_sentence(message, "evil.safetensors", f"{field}={value}", accepted, "FlexIP config")


def test_layer_count_and_layer_sizes_are_bounded(valid_file, tmp_path):
    layers = [{"key": f"input_{i}_0", "inner_dim": 64, "heads": 2} for i in range(SIZE_BOUNDS["layers"][1] + 1)]
    path = with_config(valid_file, tmp_path / "many_layers.safetensors", layers=layers)
    assert_one_sentence(
        bounded_refusal(lambda: checkpoint.validate(path)), "many_layers.safetensors", "layers=1025", "1..1024"
    )
    wide = [{"key": "input_1_0", "inner_dim": 2**33, "heads": 2}]
    path = with_config(valid_file, tmp_path / "wide_layer.safetensors", layers=wide)
    assert_one_sentence(
        bounded_refusal(lambda: checkpoint.validate(path)), "wide_layer.safetensors", "inner_dim=8589934592", "1..8192"
    )


def test_config_json_nested_100000_deep_is_refused_without_recursion_error(valid_file, tmp_path):
    tensors, _ = parts(valid_file)
    path = tmp_path / "deep.safetensors"
    save_file(tensors, str(path), metadata={"flexip": "[" * 100_000 + "]" * 100_000})
    assert_one_sentence(bounded_refusal(lambda: checkpoint.validate(path)), "deep.safetensors", "nests JSON deeper")


def test_header_json_nested_deep_is_refused(tmp_path):
    header = b'{"x": {"dtype": ' + b"[" * 100_000 + b"]" * 100_000 + b', "shape": [], "data_offsets": [0, 0]}}'
    path = write_raw(tmp_path / "deep_header.safetensors", header)
    assert_one_sentence(
        bounded_refusal(lambda: checkpoint.validate(path)), "deep_header.safetensors", "nests JSON deeper"
    )


def test_nan_or_inf_weights_are_refused_naming_the_tensor(valid_file, tmp_path):
    tensors, metadata = parts(valid_file)
    tensors["personalization.kv_proj.weight"][0, 0] = math.nan  # issue: sampling "succeeded", a uniform image
    save_file(tensors, str(tmp_path / "nan.safetensors"), metadata=metadata)
    tensors, _ = parts(valid_file)
    tensors["layers.output_3_0.pers.to_v.weight"][3, 1] = -math.inf
    save_file(tensors, str(tmp_path / "inf.safetensors"), metadata=metadata)
    for name, tensor in (("nan", "personalization.kv_proj.weight"), ("inf", "layers.output_3_0.pers.to_v.weight")):
        message = bounded_refusal(partial(checkpoint.load, tmp_path / f"{name}.safetensors"))
        assert_one_sentence(message, f"{name}.safetensors", tensor, "NaN or infinite")


def test_header_length_field_claiming_gigabytes_is_refused_before_reading(tmp_path):
    path = write_raw(tmp_path / "huge_header.safetensors", b'{"__metadata__": {}}', length=2**40)
    assert_one_sentence(bounded_refusal(lambda: checkpoint.validate(path)), "huge_header.safetensors", "header length")


def test_header_with_too_many_tensors_is_refused(valid_file, tmp_path):
    count = MAX_TENSORS + 10
    header = {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(count)}
    path = write_raw(tmp_path / "crowded.safetensors", header)
    assert_one_sentence(
        bounded_refusal(lambda: checkpoint.validate(path)),
        "crowded.safetensors",
        f"{count:,} tensors",
        f"{MAX_TENSORS:,}",
    )
    million = (
        b"{" + b",".join(b'"t%d":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}' % i for i in range(10**6)) + b"}"
    )
    path = write_raw(tmp_path / "million.safetensors", million)
    assert_one_sentence(bounded_refusal(lambda: checkpoint.validate(path)), "million.safetensors")


@pytest.mark.parametrize(
    "entry,mention",
    [
        ({"dtype": "F32", "shape": [8, 8], "data_offsets": [0, 16]}, "16 bytes for shape [8, 8]"),
        ({"dtype": "F32", "shape": [2**20, 2**20], "data_offsets": [0, 16]}, "sizes that fit the file"),
        ({"dtype": "F32", "shape": [4], "data_offsets": [0, 2**40]}, "outside the file"),
        ({"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}, "not a list of at most 8 sizes"),
        ({"dtype": "F32", "shape": [1] * 9, "data_offsets": [0, 4]}, "not a list of at most 8 sizes"),
        ({"dtype": "Q4", "shape": [4], "data_offsets": [0, 16]}, "unknown dtype"),
    ],
)
def test_tensor_entries_that_do_not_fit_the_file_are_refused(tmp_path, entry, mention):
    path = write_raw(tmp_path / "entry.safetensors", {"w": entry}, data=bytes(16))
    for check in (checkpoint.validate, open_file):
        assert_one_sentence(bounded_refusal(partial(check, path)), "entry.safetensors", "'w'", mention)


# IP-Adapter files: the sizes a file's shapes choose are bounded the same way
def _tiny_layers() -> tuple[LayerSpec, ...]:
    return (LayerSpec("input_1_0", 64, 1),)


def test_ip_adapter_resampler_deeper_than_its_bound_is_refused(valid_file, tmp_path):
    shapes = ip_adapter_shapes(
        "ip-adapter-plus_sd15",
        layer_widths=(64,),
        context_dim=8,
        projection=resampler_projection(8, 8, width=8, heads=1, depth=65, queries=2),
    )
    path = tmp_path / "deep-plus.safetensors"
    save_file(random_weights(shapes), str(path))
    message = bounded_refusal(lambda: load_one_file(path, _tiny_layers(), 8))
    assert_one_sentence(message, "deep-plus.safetensors", "resampler_depth=65", "1..64")


def test_ip_adapter_with_more_tokens_than_its_bound_is_refused(valid_file, tmp_path):
    shapes = ip_adapter_shapes(
        "ip-adapter_sd15", layer_widths=(64,), context_dim=2, projection=linear_projection(4, 2, tokens=2048)
    )
    path = tmp_path / "many-tokens.safetensors"
    save_file(random_weights(shapes), str(path))
    assert_one_sentence(
        bounded_refusal(lambda: load_one_file(path, _tiny_layers(), 2)),
        "many-tokens.safetensors",
        "tokens=2048",
        "1..1024",
    )


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_ip_adapter_with_nan_weights_is_refused_naming_the_tensor(valid_file, tmp_path, suffix):
    tensors = random_weights(
        ip_adapter_shapes("ip-adapter_sd15", layer_widths=(64,), context_dim=8, projection=linear_projection(4, 8))
    )
    tensors["ip_adapter.1.to_v_ip.weight"][2, 2] = math.nan
    path = write_ip_adapter(tmp_path / f"nan{suffix}", tensors)
    assert_one_sentence(
        bounded_refusal(lambda: load_one_file(path, _tiny_layers(), 8)),
        f"nan{suffix}",
        "ip_adapter.1.to_v_ip.weight",
        "NaN or infinite",
    )


def test_compressed_bin_archive_is_refused_before_unpickling(tmp_path):
    tensors = random_weights(
        ip_adapter_shapes("ip-adapter_sd15", layer_widths=(64,), context_dim=8, projection=linear_projection(4, 8))
    )
    plain = write_ip_adapter(tmp_path / "plain.bin", tensors)
    packed = tmp_path / "packed.bin"
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as target:
        for record in source.infolist():
            target.writestr(record.filename, source.read(record))
    assert_one_sentence(bounded_refusal(lambda: open_file(packed)), "packed.bin", "compressed")
    assert load_one_file(plain, _tiny_layers(), 8) is not None  # the same content, as torch.save wrote it, loads


def test_config_values_of_the_wrong_json_type_are_refused(valid_file, tmp_path):
    for value in (1.5, True, None, "64", [], {}):
        path = with_config(valid_file, tmp_path / "typed.safetensors", query_depth=value)
        assert_one_sentence(bounded_refusal(partial(checkpoint.validate, path)), "typed.safetensors", "query_depth")
    path = with_config(valid_file, tmp_path / "long.safetensors", base="x" * 10**6)
    message = bounded_refusal(lambda: checkpoint.validate(path))
    assert_one_sentence(message, "long.safetensors", "base 'xxx")
    assert len(message) < 300  # the file's string is not echoed whole
