"""The SelfPlayRun models: defaults are the published method, bad input names its field."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from opensir import spec
from opensir.spec import SpecError, parse_run


def manifest(**spec_fields):
    return {
        "apiVersion": "opensir.io/v1alpha1",
        "kind": "SelfPlayRun",
        "metadata": {"name": "demo"},
        "spec": {"model": {"name": "builtin:smollm2-135m-instruct"}, **spec_fields},
    }


def problems(document) -> dict[str, tuple]:
    with pytest.raises(SpecError) as caught:
        parse_run(document)
    return {path: (value, message) for path, value, message in caught.value.problems}


def test_defaults_are_the_published_configuration():
    run = parse_run(manifest())
    method, training = run.spec.self_play, run.spec.training
    assert (method.teacher.group_size, method.teacher.upscale_ratio, method.teacher.max_concepts) == (8, 4, 3)
    assert method.student.samples == 8
    assert (method.solve_rate.lower, method.solve_rate.upper) == (0.5, 0.9)
    weights = method.rewards.teacher
    assert (weights.solvability, weights.diversity, weights.format, weights.length) == (1.0, 1.0, 0.1, 1.0)
    assert (method.rewards.student.accuracy, method.rewards.student.format) == (1.0, 0.1)
    assert method.rewards.diversity_top_k == 5 and method.rewards.length_cap_tokens == 1000
    assert method.student.voting == "exact" and method.student.solve_rate_over == "parseable"
    assert (training.learning_rate, training.warmup_steps, training.max_grad_norm) == (3e-7, 25, 0.5)
    assert (training.kl_beta, training.max_steps, training.save_every) == (1e-4, 200, 25)
    assert training.schedule == "constant_with_warmup"
    assert run.spec.seed_problems == ["What is 1+1?"]


def test_inverted_band_names_the_lower_bound():
    found = problems(manifest(selfPlay={"solveRate": {"lower": 0.9, "upper": 0.5}}))
    assert found == {"spec.selfPlay.solveRate.lower": (0.9, "must be less than upper (0.5)")}


@pytest.mark.parametrize(
    ("section", "path", "value"),
    [
        ({"selfPlay": {"teacher": {"groupSize": 1}}}, "spec.selfPlay.teacher.groupSize", 1),
        ({"selfPlay": {"student": {"samples": 1}}}, "spec.selfPlay.student.samples", 1),
        ({"selfPlay": {"teacher": {"upscaleRatio": 0}}}, "spec.selfPlay.teacher.upscaleRatio", 0),
        ({"training": {"learningRate": -1}}, "spec.training.learningRate", -1),
        ({"training": {"nodes": 2}}, "spec.training.nodes", 2),
        (
            {"training": {"deepspeed": {"stage": 2, "offloadParams": True}}},
            "spec.training.deepspeed.offloadParams",
            True,
        ),
        ({"storage": {"uri": "gs://bucket"}}, "spec.storage.uri", "gs://bucket"),
        ({"rollout": {"gpus": 1, "tensorParallel": 2}}, "spec.rollout.tensorParallel", 2),
        ({"seedProblems": []}, "spec.seedProblems", []),
        ({"seedProblems": ["ok", ""]}, "spec.seedProblems[1]", ""),
        ({"evaluation": {"benchmarks": ["mmlu"]}}, "spec.evaluation.benchmarks[0]", "mmlu"),
    ],
)
def test_each_rule_names_its_field_and_value(section, path, value):
    found = problems(manifest(**section))
    assert list(found) == [path]
    assert found[path][0] == value


def test_unknown_and_missing_fields_are_named():
    document = manifest(selfPlay={"teachr": {}})
    del document["spec"]["model"]
    found = problems(document)
    assert found["spec.model"][1] == "is required"
    assert found["spec.selfPlay.teachr"][1] == "is not a known field"


def test_wrong_kind_and_metadata_name():
    document = manifest()
    document["kind"] = "Pod"
    document["metadata"]["name"] = "Not_A_DNS_Label"
    assert set(problems(document)) == {"kind", "metadata.name"}


def test_quantities_accept_numbers_like_kubernetes():
    run = parse_run(manifest(resources={"trainer": {"requests": {"cpu": 8, "memory": "64Gi"}}}))
    assert run.spec.resources.trainer.requests == {"cpu": "8", "memory": "64Gi"}


def test_dump_round_trips():
    run = parse_run(manifest(training={"maxSteps": 70}))
    again = parse_run(spec.dump_run(run))
    assert again == run
    assert spec.dump_run(run)["spec"]["training"]["maxSteps"] == 70


def _models(model: type[BaseModel], seen: set) -> list[type[BaseModel]]:
    if model in seen:
        return []
    seen.add(model)
    found = [model]
    for info in model.model_fields.values():
        for candidate in _types_in(info.annotation):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                found += _models(candidate, seen)
    return found


def _types_in(annotation):
    yield annotation
    for arg in getattr(annotation, "__args__", ()):
        yield from _types_in(arg)


def test_every_field_has_a_description():
    undocumented = [
        f"{model.__name__}.{name}"
        for model in _models(spec.SelfPlayRun, set())
        for name, info in model.model_fields.items()
        if not (info.description or "").strip()
    ]
    assert undocumented == []
