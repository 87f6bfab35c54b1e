"""Config validation: unknown keys, wrong types and unsafe YAML are errors
that name the key and what would be valid."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from jaxrec.config import ConfigError, to_dict, to_yaml
from jaxrec.registry import load_config
from jaxrec.tasks.encode import EncodeConfig


ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_defaults_round_trip_through_yaml(tmp_path):
    config = load_config(None)
    assert config == EncodeConfig()
    assert load_config(_write(tmp_path, to_yaml(config))) == config


def test_typo_names_the_key_suggests_and_lists_valid_keys(tmp_path):
    path = _write(tmp_path, "encode:\n  poolng: mean\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and "encode.poolng" in message
    assert "did you mean 'pooling'" in message and "pooling, mask, batch_size, max_length" in message


@pytest.mark.parametrize(
    "text,expected",
    [
        ("encode:\n  batch_size: '64'\n", "encode.batch_size: expected int"),
        ("encode:\n  batch_size: true\n", "encode.batch_size: expected int"),
        ("encode:\n  pooling: max\n", "encode.pooling: expected 'mean' | 'last'"),
        ("model: smollm2\n", "model: expected a mapping"),
        ("encode:\n  batch_size: 0\n", "batch_size must be positive"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("task: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
    ],
)
def test_bad_values_are_named(tmp_path, text, expected):
    with pytest.raises(ConfigError, match=expected.replace("|", r"\|").replace("(", r"\(")):
        load_config(_write(tmp_path, text))


def test_overrides_are_parsed_as_yaml_and_validated(tmp_path):
    config = load_config(None, ["encode.batch_size=32", "model.dtype=bfloat16", "run_dir=out/x"])
    assert (config.encode.batch_size, config.model.dtype, config.run_dir) == (32, "bfloat16", "out/x")
    with pytest.raises(ConfigError, match="unknown key 'encode.size'"):
        load_config(None, ["encode.size=3"])
    with pytest.raises(ConfigError, match="must look like key.path=value"):
        load_config(None, ["encode.batch_size"])


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_a_config_extends_another_mappings_merged_and_the_rest_replaced(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "task: seqrec\nseed: 3\nrecommender: {backbone: {model: gru4rec, hidden: 32, layers: 2}}\n"
        "evaluation: {ks: [5, 10, 20]}\nrun_dir: runs/base\n")
    (tmp_path / "middle.yaml").write_text("extends: base.yaml\nrecommender: {backbone: {hidden: 16}}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "top.yaml").write_text("extends: ../middle.yaml\nevaluation: {ks: [10]}\nrun_dir: runs/top\n")
    config = load_config(tmp_path / "sub" / "top.yaml", ["recommender.backbone.layers=1"])
    backbone = config.recommender.backbone
    assert (backbone.model, backbone.hidden, backbone.layers) == ("gru4rec", 16, 1)
    assert (config.evaluation.ks, config.seed, config.run_dir) == ([10], 3, "runs/top")


def test_an_extended_pipelines_includes_stay_relative_to_its_own_file(tmp_path):
    from jaxrec.pipelines.config import load_pipeline

    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "shared.yaml").write_text(
        "run_dir: runs/shared\nstages:\n  teacher: {task: seqrec, loop: {steps: 5}}\n")
    (tmp_path / "base" / "pipeline.yaml").write_text(
        "include: [shared.yaml]\nstages:\n  student: {task: seqrec, loop: {steps: 7}}\n")
    (tmp_path / "variant.yaml").write_text("extends: base/pipeline.yaml\nstages:\n  student: {loop: {steps: 3}}\n")
    pipeline = load_pipeline(tmp_path / "variant.yaml")
    assert list(pipeline.stages) == ["teacher", "student"]
    assert pipeline.stages["student"].tree["loop"] == {"steps": 3}


def test_extends_errors_name_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\ntask: seqrec\n")
    with pytest.raises(ConfigError, match=r"a.yaml: extends .*b.yaml, which does not exist"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="which extends it back"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("extends: [a.yaml]\n")
    with pytest.raises(ConfigError, match="extends: expected the path"):
        load_config(tmp_path / "b.yaml")


def test_an_override_of_an_aliased_section_changes_only_the_place_it_names(tmp_path):
    from jaxrec.config import read_tree

    path = _write(tmp_path, "stages:\n  a: {loop: &loop {epochs: 3}}\n  b: {loop: *loop}\n")
    tree = read_tree(path, ["stages.a.loop.epochs=1"])
    assert (tree["stages"]["a"]["loop"]["epochs"], tree["stages"]["b"]["loop"]["epochs"]) == (1, 3)


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_every_shipped_config_header_says_where_it_differs_from_the_authors_code():
    import re

    said = re.compile(r"deliberate differences?|deviations from the authors' code|not one of the three methods'",
                      re.IGNORECASE)
    silent = []
    for path in sorted(CONFIGS.rglob("*.yaml")):
        header = " ".join(line.lstrip("# ") for line in path.read_text().splitlines() if line.startswith("#"))
        if not said.search(header):
            silent.append(str(path.relative_to(CONFIGS)))
    assert not silent, f"config headers without their deviations from the authors' code: {silent}"


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_shipped_configs_are_valid(path, tmp_path):
    """Every shipped config, task or pipeline, validates; a pipeline's every
    stage and its report too (planned against an empty directory)."""
    from jaxrec.config import read_tree
    from jaxrec.pipelines.config import is_pipeline, load_pipeline
    from jaxrec.pipelines.plan import ACTIONS, make_plan
    from jaxrec.pipelines.report import report_spec
    from jaxrec.registry import TASKS

    if not is_pipeline(read_tree(path)):
        assert load_config(path).task in TASKS
        return
    pipeline = load_pipeline(path, [f"run_dir={tmp_path}"])
    plan = make_plan(pipeline)
    assert {step.task for step in plan} <= set(TASKS) and all(step.action in ACTIONS for step in plan)
    if pipeline.report:
        assert report_spec(pipeline).compare


def test_exponent_floats_without_a_dot_are_numbers_but_quoted_strings_are_not():
    assert load_config(None, ["task=mntp", "optimizer.learning_rate=1e-9"]).optimizer.learning_rate == 1e-9
    with pytest.raises(ConfigError, match="optimizer.learning_rate: expected float"):
        load_config(None, ["task=mntp", 'optimizer.learning_rate="1e-9"'])


def test_a_section_the_task_does_not_use_names_the_tasks_that_do(tmp_path):
    with pytest.raises(ConfigError, match=r"section 'recommender' is not used by task 'mntp' \(it belongs to seqrec\)"):
        load_config(None, ["task=mntp", "recommender.backbone.hidden=8"])
    with pytest.raises(ConfigError, match=r"section 'masking' is not used by task 'encode' \(it belongs to mntp, contrastive\)"):
        load_config(_write(tmp_path, "masking:\n  rate: 0.2\n"))
    with pytest.raises(ConfigError, match="task: expected one of encode, csft"):
        load_config(None, ["task=train"])


@pytest.mark.parametrize("setting,expected", [
    ("loop.patience=-1", "patience must be >= 0"),
    ("data.k_core=0", "k_core must be >= 1"),
    ("optimizer.learning_rate=.nan", "learning_rate must be a positive finite number"),
    ("optimizer.learning_rate=0", "learning_rate must be a positive finite number"),
    ("model.attention_dropout=1.0", r"attention_dropout must be in \[0, 1\)"),
    ("trainable.lora_dropout=-0.1", r"lora_dropout must be in \[0, 1\)"),
    ("masking.rate=0", r"rate must be a share in \(0, 1\)"),
    ("masking.rate=1.5", r"rate must be a share in \(0, 1\)"),
    ("optimizer.b1=1.0", r"b1 must be in \[0, 1\)"),
    ("optimizer.b2=-0.1", r"b2 must be in \[0, 1\)"),
])
def test_out_of_range_values_are_config_errors(setting, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(None, ["task=mntp", setting])


@pytest.mark.parametrize("task,setting,expected", [
    ("contrastive", "contrastive.temperature=0", "temperature must be > 0"),
    ("seqrec", "evaluation.seeds=[0, 0]", "seeds must be distinct"),
    ("seqrec", "data.cold_items=1.0", r"cold_items must be a share in \(0, 1\)"),
    ("seqrec", "evaluation.tail_threshold=0", "tail_threshold must be >= 1"),
])
def test_values_that_would_fail_later_are_refused_before_any_work(task, setting, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(None, [f"task={task}", setting])


def test_a_recommenders_monitor_is_one_of_its_validation_metrics():
    config = load_config(None, ["task=seqrec"])  # the loop's default (loss) is nothing a ranking validation records
    assert (config.loop.monitor, config.loop.monitor_mode) == ("recall@20", "max")
    assert load_config(None, ["task=llmsrec", "evaluation.ks=[10]"]).loop.monitor == "recall@10"
    assert load_config(None, ["task=seqrec", "loop.monitor=ndcg@10", "loop.monitor_mode=max"]).loop.monitor == "ndcg@10"
    with pytest.raises(ConfigError, match=r"loop.monitor 'ndcg@50' is not a validation metric of this task; choose one of "
                                          r"recall@5, ndcg@5"):
        load_config(None, ["task=seqrec", "loop.monitor=ndcg@50"])


def test_an_empty_config_file_is_an_error_not_the_defaults(tmp_path):
    with pytest.raises(ConfigError, match="the file is empty"):
        load_config(_write(tmp_path, "# nothing but a comment\n"))


def test_seqrec_dropout_range():
    with pytest.raises(ConfigError, match=r"dropout must be in \[0, 1\)"):
        load_config(None, ["task=seqrec", "recommender.backbone.dropout=1.5"])


def test_layering_model_core_and_library_modules():
    """The model core imports neither the data layer nor a task; no library
    module imports the run config."""
    import ast

    root = Path(__file__).resolve().parents[1] / "jaxrec"

    def imports(path):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                yield node.module
            elif isinstance(node, ast.Import):
                yield from (alias.name for alias in node.names)

    for path in (root / "models").glob("*.py"):
        bad = [m for m in imports(path) if m.startswith(("jaxrec.data", "jaxrec.tasks", "jaxrec.runs"))]
        assert not bad, f"{path.name} imports {bad}"
    library = ["models", "data", "objectives", "train", "seqrec", "eval"]
    for package in library:
        for path in (root / package).glob("*.py"):
            bad = [m for m in imports(path) if m == "jaxrec.config" or m.startswith(("jaxrec.tasks", "jaxrec.pipelines"))]
            assert not bad, f"{package}/{path.name} imports {bad}"
    for path in [*(root / "tasks").glob("*.py"), *(root / "methods").rglob("*.py")]:
        # tasks and methods know nothing of the pipelines built from them
        bad = [m for m in imports(path) if m.startswith("jaxrec.pipelines")]
        assert not bad, f"{path.relative_to(root)} imports {bad}"


FLOORS = [
    {"errors", "shapes", "inputs"},
    {"io", "progress", "sharding", "config"},
    {"assets"},
    {"runtime"},
    {"models"},
    {"data"},
    {"objectives", "eval"},
    {"seqrec"},
    {"train"},
    {"runs"},
    {"tasks"},
    {"methods"},
    {"registry"},
    {"run_dir"},
    {"pipelines", "new_items"},
    {"recommend", "export"},
    {"serve", "launch"},
    {"bench", "__init__"},
]
"""jaxrec's parts from the bottom up: each imports only from its own floor's parts below it and from lower floors."""


def test_every_part_imports_only_from_lower_floors():
    import ast

    root = Path(__file__).resolve().parents[1] / "jaxrec"
    floor = {part: level for level, parts in enumerate(FLOORS) for part in parts}
    part_of = lambda path: path.relative_to(root).parts[0].removesuffix(".py")
    found = {part_of(path) for path in root.rglob("*.py")}
    assert found == set(floor), f"parts without a floor: {found - set(floor)}; floors naming no part: {set(floor) - found}"
    bad = []
    for path in root.rglob("*.py"):
        part = part_of(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "jaxrec":
                names = node.module.split(".")[1:2] or [alias.name for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name.split(".")[1] for alias in node.names if alias.name.startswith("jaxrec.")]
            else:
                continue
            for name in names:
                if name in floor and name != part and floor[name] >= floor[part]:
                    bad.append(f"{path.relative_to(root)} (floor {floor[part]}) imports {name} (floor {floor[name]})")
    assert not bad, "\n".join(bad)


def test_no_import_cycle_between_modules():
    """Module-level and deferred imports alike: no module reaches itself again (a
    submodule's implicit import of its package's __init__ aside)."""
    import ast

    root = Path(__file__).resolve().parents[1] / "jaxrec"
    module_of = lambda path: ".".join(("jaxrec", *path.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
    modules = {module_of(path): path for path in root.rglob("*.py")}
    graph = {}
    for module, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxrec"):
                # `from package import submodule` imports the submodule, not what the package's __init__ holds
                for alias in node.names:
                    imported.add(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules
                                 else node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names if alias.name.startswith("jaxrec"))
        graph[module] = {i for i in imported if i in modules and i != module}
    state: dict[str, int] = {}

    def visit(module, trail):
        state[module] = 1
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*trail[trail.index(dep):], dep]))
            if dep not in state:
                visit(dep, [*trail, dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_shipped_configs_follow_the_authors_where_they_say_so():
    """The paper configs take the authors' downstream settings; the ablation has the causal + mean
    row their extraction actually computed, and an ID row trained alike; LLM-SRec's teacher is trained
    as the authors' code trains it."""
    from jaxrec.pipelines.config import load_pipeline, stage_config

    configs = ROOT / "configs"
    paper = load_pipeline(configs / "llm2rec" / "qwen2_0.5b_paper.yaml")
    assert stage_config(paper, "embed").encode.mask == "causal"
    sasrec, gru4rec = stage_config(paper, "sasrec"), stage_config(paper, "gru4rec")
    assert (sasrec.recommender.backbone.embedding_init, sasrec.recommender.items.adapter_init,
            sasrec.recommender.items.conditioning) == (1.0, "xavier_normal", "none")
    gru = gru4rec.recommender.backbone
    assert sasrec.optimizer.decay_all and not gru.gru_bias and not gru.output_layer
    ablation = load_pipeline(configs / "llm2rec" / "ablation_video_games.yaml")
    causal_mean = stage_config(ablation, "embed_causal_mean").encode
    assert (causal_mean.mask, causal_mean.pooling) == ("causal", "mean")
    rows = {r["stage"] for r in ablation.report["compare"]}
    assert {"sasrec_causal_mean", "sasrec_id"} <= rows
    same = lambda name: {k: v for k, v in dataclasses.asdict(stage_config(ablation, name)).items() if k != "run_dir"}
    id_row, llm_row = same("sasrec_id"), same("sasrec_contrastive")
    assert id_row["recommender"]["items"]["kind"] == "id" and llm_row["recommender"]["items"]["kind"] == "llm"
    for section in ("optimizer", "loop", "batch", "evaluation"):
        assert id_row[section] == llm_row[section], section
    teacher = stage_config(load_pipeline(configs / "llmsrec" / "smollm2_ml100k.yaml"), "teacher")
    assert (teacher.recommender.backbone.positions, teacher.recommender.backbone.weight_init) == ("from_end", "xavier_normal")
    assert teacher.batch.with_replacement and teacher.optimizer.b2 == 0.98
    assert (teacher.loop.epochs, teacher.loop.patience, teacher.loop.eval_every) == (200, 0, 0)


def test_the_recommender_is_in_sections_and_runs_stored_flat_still_read(tmp_path):
    """A config a user writes in the flat form of earlier versions gets an error naming each key's
    new place; a run stored in that form reads as today's sections (the same config, so a pipeline
    skips it), and its checkpoints' identity keeps the flat names (so they still resume)."""
    from jaxrec.config import path_now
    from jaxrec.registry import build_config
    from jaxrec.run_dir import same_config
    from jaxrec.tasks.seqrec import _identity

    with pytest.raises(ConfigError, match=r"'recommender.hidden' is now 'recommender.backbone.hidden'"):
        build_config({"task": "seqrec", "recommender": {"hidden": 32}})
    with pytest.raises(ConfigError, match=r"'recommender.items' is now 'recommender.items.kind'"):
        build_config({"task": "seqrec", "recommender": {"items": "llm", "embeddings": "e"}})
    with pytest.raises(ConfigError, match=r"'recommender.align_to' is now 'recommender.alignment.to'"):
        build_config({"task": "seqrec", "recommender": {"align_to": "r"}})

    flat = {"model": "gru4rec", "hidden": 32, "items": "id+llm", "embeddings": "e", "id_dropout": 0.2,
            "align_to": "r", "align_items": None, "align_weight": 0.5, "examples": "chunks"}
    stored = {"task": "seqrec", "seed": 4, "recommender": flat}
    config = build_config(stored, stored=True)
    spec = config.recommender
    assert (spec.backbone.model, spec.backbone.hidden, spec.examples) == ("gru4rec", 32, "chunks")
    assert (spec.items.kind, spec.items.embeddings, spec.items.id_dropout) == ("id+llm", "e", 0.2)
    assert (spec.alignment.to, spec.alignment.max_items, spec.alignment.weight) == ("r", None, 0.5)
    sectioned = {"task": "seqrec", "seed": 4, "recommender": {
        "backbone": {"model": "gru4rec", "hidden": 32}, "items": {"kind": "id+llm", "embeddings": "e", "id_dropout": 0.2},
        "alignment": {"to": "r", "max_items": None, "weight": 0.5}, "examples": "chunks"}}
    today = to_dict(build_config(sectioned))
    assert today == to_dict(config)
    assert same_config(today, {"config": stored, "config_hash": "of the stored tree"})
    assert not same_config(to_dict(build_config({**sectioned, "seed": 5})), {"config": stored})
    assert _identity(config, 0)["recommender"] == flat
    for stored_key, key_now in (("recommender.embeddings", "recommender.items.embeddings"),
                                ("recommender.align_to", "recommender.alignment.to"),
                                ("recommender.items", "recommender.items.kind"), ("data.name", "data.name"),
                                ("recommender.items.embeddings", "recommender.items.embeddings")):
        assert path_now(type(config), stored_key) == key_now  # an input's field, as a stored manifest names it
    # a relaunch refused over a run stored flat names the stored value under today's key
    import json

    from jaxrec.run_dir import RunDirConflict, check_relaunch

    (tmp_path / "manifest.json").write_text(json.dumps({"task": "seqrec", "status": "finished", "config": stored,
                                                        "config_hash": "of the stored tree"}))
    with pytest.raises(RunDirConflict, match=r"recommender\.backbone\.hidden \(32 -> 64\)"):
        check_relaunch(to_dict(build_config({**sectioned, "recommender": {**sectioned["recommender"],
                                                                            "backbone": {"model": "gru4rec", "hidden": 64}}})),
                       "seqrec", tmp_path)


def test_non_default_fields_leave_out_what_a_later_option_adds_at_its_default():
    from jaxrec.config import non_default_fields
    from jaxrec.seqrec.spec import BackboneSpec, ItemsSpec, RecommenderSpec
    from jaxrec.tasks.seqrec import SeqrecConfig

    spec = RecommenderSpec(backbone=BackboneSpec(hidden=128),
                           items=ItemsSpec(conditioning="standardize", adapter=[768]))
    assert non_default_fields(spec) == {"backbone": {"hidden": 128},
                                        "items": {"conditioning": "standardize", "adapter": [768]}}
    config = SeqrecConfig(recommender=spec)
    assert non_default_fields(config)["recommender"] == non_default_fields(spec)
    assert "recommender" not in non_default_fields(SeqrecConfig())


def test_every_field_a_task_reads_is_declared_by_its_section_and_checked_before_a_run(tmp_path):
    """The files and runs a config names are declared where their sections are (``INPUTS``):
    each declared name is a field of its section, and check_inputs names a missing one."""
    from jaxrec.inputs import input_fields, value_at
    from jaxrec.registry import TASKS
    from jaxrec.tasks.specs import check_inputs

    for task in TASKS.values():
        for *sections, key in input_fields(task.config):
            spec = value_at(task.config(), tuple(sections))
            assert key in {f.name for f in dataclasses.fields(spec)}, (task.name, sections, key)
    seqrec = input_fields(TASKS["seqrec"].config)
    assert {("data", "name"), ("recommender", "items", "embeddings"), ("recommender", "alignment", "to")} == set(seqrec)
    assert seqrec[("recommender", "alignment", "to")].run and not seqrec[("data", "name")].run
    llmsrec = input_fields(TASKS["llmsrec"].config)
    assert {("distill", "teacher"), ("model", "init_from"), ("model", "name")} <= set(llmsrec)
    assert llmsrec[("model", "name")].asset and llmsrec[("model", "name")].run
    missing = tmp_path / "no-teacher"
    with pytest.raises(ConfigError, match=f"distill.teacher: {missing} does not exist; expected a finished seqrec run"):
        check_inputs(load_config(None, ["task=llmsrec", f"distill.teacher={missing}"]))
    # the tasks whose runs a report may compare, and what each exports, come with the task
    assert sorted(n for n, t in TASKS.items() if t.tests_recommender) == ["llmsrec", "seqrec"]
    assert {TASKS[n].export for n in ("encode", "seqrec", "llmsrec", "mntp")} == {"item_embeddings", "recommender", "lm"}
