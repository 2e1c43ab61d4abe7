"""SamplingParams validation: every field accepts its good values and names itself when bad."""

import math

import numpy as np
import pytest

from floorline.errors import InvalidRequestError
from floorline.sampling_params import SamplingParams

GOOD = [
    ("n", [1, 4, np.int64(2)]),
    ("temperature", [0, 0.0, 0.7, 1, 2.5, np.float32(0.5)]),
    ("top_p", [1e-3, 0.5, 1.0, 1]),
    ("top_k", [-1, 0, 1, 50]),
    ("min_p", [0.0, 0.05, 1.0]),
    ("repetition_penalty", [0.5, 1.0, 1.3, 2]),
    ("presence_penalty", [-2.0, 0, 1.5, 2]),
    ("frequency_penalty", [-2, 0.0, 0.5, 2.0]),
    ("seed", [None, 0, 42, -1, 2**63, 2**64 - 1]),
    ("max_tokens", [None, 1, 1000]),
    ("min_tokens", [0, 3]),
    ("stop", [None, "###", ["a", "bc"], ("x",)]),
    ("stop_token_ids", [[], [0, 2], (5,), None]),
    ("ignore_eos", [True, False]),
    ("logprobs", [None, 0, 5, 20]),
    ("skip_special_tokens", [True, False]),
    ("include_stop_str_in_output", [True, False]),
]

BAD = [
    ("n", [0, -1, 1.0, True, "2", None]),
    ("temperature", [-1.0, -1e-9, math.nan, math.inf, "0.5", True, None]),
    ("top_p", [0, 0.0, -0.1, 1.01, math.nan, "1", False]),
    ("top_k", [-2, -100, 2.0, True, "5", None]),
    ("min_p", [-0.1, 1.5, math.nan, "0.1", True]),
    ("repetition_penalty", [0, -1.0, math.inf, "1.1", True]),
    ("presence_penalty", [-2.01, 2.5, math.nan, "0", False]),
    ("frequency_penalty", [-3, 2.0001, -math.inf, "1", True]),
    ("seed", [1.5, True, "7", 2**64, -(2**63) - 1]),
    ("max_tokens", [0, -5, 1.5, True, "16"]),
    ("min_tokens", [-1, 2.0, True, "1"]),
    ("stop", [5, ["ok", 3], [""], "", {"a": 1}]),
    ("stop_token_ids", [5, [1, -2], [1.0], [True], "12"]),
    ("ignore_eos", [1, 0, "true", None]),
    ("logprobs", [-1, 21, 2.0, True, "3"]),
    ("skip_special_tokens", [1, "no", None]),
    ("include_stop_str_in_output", [0, "yes"]),
]


def test_defaults():
    p = SamplingParams()
    assert (p.n, p.temperature, p.top_p, p.top_k, p.min_p) == (1, 1.0, 1.0, -1, 0.0)
    assert (p.max_tokens, p.min_tokens, p.stop, p.stop_token_ids) == (16, 0, [], [])
    assert p.logprobs is None and p.seed is None and not p.greedy and not p.uses_penalties


@pytest.mark.parametrize("name,value", [(n, v) for n, vs in GOOD for v in vs])
def test_good_values(name, value):
    SamplingParams(**{name: value})


@pytest.mark.parametrize("name,value", [(n, v) for n, vs in BAD for v in vs])
def test_bad_values_name_the_field(name, value):
    with pytest.raises(InvalidRequestError) as info:
        SamplingParams(**{name: value})
    err = info.value
    assert err.param == name
    message = str(err)
    assert message.startswith(name + " ")
    assert "\n" not in message
    assert "must" in message


def test_message_shows_value_and_accepted_range():
    with pytest.raises(InvalidRequestError, match=r"^temperature must be >= 0, got -1.0$"):
        SamplingParams(temperature=-1)
    with pytest.raises(InvalidRequestError, match=r"top_p must be in \(0, 1\], got 1.5"):
        SamplingParams(top_p=1.5)
    with pytest.raises(InvalidRequestError, match=r"n must be an integer, got True \(bool\)"):
        SamplingParams(n=True)
    with pytest.raises(InvalidRequestError, match=r"temperature must be a finite number, got nan"):
        SamplingParams(temperature=float("nan"))


def test_min_tokens_cannot_exceed_max_tokens():
    with pytest.raises(InvalidRequestError) as info:
        SamplingParams(max_tokens=4, min_tokens=5)
    assert info.value.param == "min_tokens"
    SamplingParams(max_tokens=None, min_tokens=500)
    SamplingParams(max_tokens=4, min_tokens=4)


def test_normalization():
    p = SamplingParams(temperature=1, top_p=1, stop="END", stop_token_ids=(3, np.int32(4)),
                       n=np.int64(2), seed=np.int64(7))
    assert type(p.temperature) is float and type(p.top_p) is float
    assert type(p.n) is int and type(p.seed) is int
    assert p.stop == ["END"]
    assert p.stop_token_ids == [3, 4] and all(type(t) is int for t in p.stop_token_ids)
    assert SamplingParams(stop=("a", "b")).stop == ["a", "b"]


def test_greedy_and_penalty_flags():
    assert SamplingParams(temperature=0).greedy
    assert SamplingParams(temperature=1e-6).greedy
    assert not SamplingParams(temperature=0.01).greedy
    assert SamplingParams(repetition_penalty=1.1).uses_penalties
    assert SamplingParams(presence_penalty=-0.5).uses_penalties
    assert SamplingParams(frequency_penalty=0.2).uses_penalties
