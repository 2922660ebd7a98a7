"""Rollout targets (fleet.firmware.targeting): the phase sizes cover every eligible box exactly once; a
version bound must be a version; the model filter ignores case."""

from __future__ import annotations

import pytest

from fleet.core.errors import InvalidInput
from fleet.firmware.selectors import rollout_preview
from fleet.firmware.targeting import phase_sizes, target_normalize
from tests.fleet.firmware.firmware_helpers import make_fleet, make_release


def test_phase_sizes_cover_every_box_once() -> None:
    assert phase_sizes([1, 10, 50, 100], 1000) == [10, 90, 400, 500]
    assert phase_sizes([1, 10, 100], 5) == [1, 0, 4]
    assert phase_sizes([100], 0) == [0]
    assert sum(phase_sizes([3, 7, 100], 12_345)) == 12_345


def test_a_version_bound_that_is_no_version_is_refused_by_name() -> None:
    # "abc" would sort after every real version and silently match nothing
    for bad in ("abc", "five", "1..2", "-1.0", "v"):
        with pytest.raises(InvalidInput) as refused:
            target_normalize({"version_min": bad})
        assert refused.value.field == "target.version_min"
        assert refused.value.message.startswith("The version “") and "5.2.1" in refused.value.message
    for good in ("5.2.1", "v2", "24.10.1-otb3", " 3.0 "):
        assert "version_min" in target_normalize({"version_min": good})


@pytest.mark.django_db
def test_the_model_filter_matches_whatever_the_case() -> None:
    # given boxes of model OTB-v2c and a release for it
    make_fleet(3, model="OTB-v2c", version="1.0.0")
    make_fleet(2, model="OTB-x86", version="1.0.0")
    release = make_release("2.0.0")
    # when staff type the model in another case, then the same boxes match
    for typed in (["OTB-v2c"], ["otb-V2C"], ["OTB-V2C", "nothing-like-it"]):
        preview = rollout_preview(release=release, target={"models": typed}, phases=[100])
        assert preview["matched"] == 3, typed
