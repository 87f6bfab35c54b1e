"""Errors that name the culprit (the setting, the --set, the file and line)
instead of a traceback, and inputs that are accepted as a user writes them."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from jaxrec import launch
from jaxrec.data.interactions import read_tsv_interactions
from jaxrec.data.item_tables import read_tsv_items
from jaxrec.errors import DataError
from tests.conftest import write_tiny_dataset

ROOT = Path(__file__).resolve().parents[1]
BOM = "\ufeff"


def test_a_byte_order_mark_is_not_part_of_the_header(tmp_path):
    inter = tmp_path / "interactions.tsv"
    inter.write_text(BOM + "user_id\titem_id\ttimestamp\nu1\t1\t100\nu1\t2\t101\n", encoding="utf-8")
    log = read_tsv_interactions(inter)
    assert list(log.items) == ["1", "2"] and list(log.timestamps) == [100.0, 101.0]
    items = tmp_path / "items.tsv"
    items.write_text(BOM + "item_id\ttitle\n1\tToy Story\n", encoding="utf-8")
    assert read_tsv_items(items).titles == ["Toy Story"]


def test_a_text_timestamp_names_the_file_line_and_format(tmp_path):
    inter = tmp_path / "interactions.tsv"
    inter.write_text("user_id\titem_id\ttimestamp\nu1\t1\t100\nu1\t2\t2020-01-02\n")
    with pytest.raises(DataError, match=rf"{inter}:3: timestamp '2020-01-02' is not a number \(expected Unix seconds"):
        read_tsv_interactions(inter)


def test_items_without_a_title_are_left_out_of_encoding_with_a_warning(tiny_checkpoints, tmp_path, capsys):
    model_dir, _ = tiny_checkpoints("qwen2-tied")
    data = write_tiny_dataset(tmp_path / "data")
    lines = (data / "items.tsv").read_text().splitlines()
    untitled_id = lines[1].split("\t")[0]
    lines[1] = f"{untitled_id}\t"
    (data / "items.tsv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "embed"
    assert launch.main(["--set", "task=encode", "--set", f"model.name={model_dir}", "--set", f"data.name={data}",
                        "--set", f"run_dir={out}"]) == 0
    ids = json.loads((out / "item_ids.json").read_text())
    assert untitled_id not in ids and len(ids) == len(lines) - 2
    assert np.load(out / "item_embeddings.npy").shape[0] == len(ids)
    assert f"1 item(s) of {data / 'items.tsv'} have no title and are not encoded" in capsys.readouterr().err


def test_a_tokenizer_that_does_not_load_names_the_setting(tiny_checkpoints, tmp_path, capsys):
    model_dir, _ = tiny_checkpoints("qwen2-tied")
    data = write_tiny_dataset(tmp_path / "data")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{not json")
    common = ["--set", "task=encode", "--set", f"model.name={model_dir}", "--set", f"data.name={data}"]
    assert launch.main(common + ["--set", f"model.tokenizer={broken}", "--set", f"run_dir={tmp_path / 'a'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"config error: model.tokenizer: the tokenizer at {broken} does not load (JSONDecodeError")
    assert launch.main(common + ["--set", f"model.tokenizer={tmp_path / 'none'}", "--set", f"run_dir={tmp_path / 'b'}"]) == 2
    assert f"model.tokenizer: {tmp_path / 'none'} does not exist" in capsys.readouterr().err


def test_a_pipeline_set_typo_is_blamed_on_the_set_and_a_cycle_is_named(tmp_path, capsys):
    quickstart = str(ROOT / "configs" / "quickstart.yaml")
    assert launch.main(["--config", quickstart, "--set", "stages.embed.encode.batch_sise=3", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("config error: --set stages.embed.encode.batch_sise=3: stages.embed: unknown key") \
        and "quickstart.yaml" not in err
    cycle = tmp_path / "cycle.yaml"
    cycle.write_text(textwrap.dedent("""\
        stages:
          a: {task: mntp, model: {init_from: c}}
          b: {task: mntp, model: {init_from: a}}
          c: {task: mntp, model: {init_from: b}}
        """))
    assert launch.main(["--config", str(cycle), "--dry-run"]) == 2
    assert "stages read each other in a cycle, a -> c -> b -> a (each reads the next)" in capsys.readouterr().err


def test_dry_run_checks_inputs_as_the_launch_does(tmp_path, capsys):
    assert launch.main(["--set", "task=mntp", "--set", f"data.name={tmp_path / 'nowhere'}", "--dry-run"]) == 2
    assert f"data.name: {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err
    quickstart = str(ROOT / "configs" / "quickstart.yaml")
    assert launch.main(["--config", quickstart, "--set", f"model.name={tmp_path / 'no-model'}",
                        "--set", f"run_dir={tmp_path / 'q'}", "--dry-run"]) == 2
    assert f"model.name: {tmp_path / 'no-model'} does not exist" in capsys.readouterr().err
