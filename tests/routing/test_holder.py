"""Hot reload: valid sets swap in, invalid ones are refused and the old set keeps running."""

from __future__ import annotations

import os
from pathlib import Path

from broker.routing import RouterHolder, read_message


def test_reload_swaps_and_refuses(tree: Path) -> None:
    holder = RouterHolder(tree / "routes", tree / "mappings", ())
    msg = read_message(tree / "samples" / "adt_a01.hl7")
    assert holder.route(msg).route == "adt-admit-register"
    assert holder.check_for_changes() is None

    route_file = tree / "routes" / "ihe-scheduled-workflow.yaml"
    original = route_file.read_text()
    route_file.write_text(original.replace("name: adt-admit-register", "name: admissions"))
    os.utime(route_file, ns=(1, 1))  # make the change visible even within one mtime tick
    assert holder.check_for_changes() is True
    assert holder.route(msg).route == "admissions"

    route_file.write_text(original.replace("actions:", "actionz:", 1))
    os.utime(route_file, ns=(2, 2))
    old_engine = holder.engine
    assert holder.reload() is False
    assert holder.engine is old_engine and holder.last_errors
    assert holder.route(msg).route == "admissions"
