"""The machine record of a run's provenance and the signature that keys cached timings."""

import os

from utils import machine


def test_cpu_model_is_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8488C\nflags\t: fpu\n"
    )
    assert machine.cpu_model(info) == "Intel(R) Xeon(R) Platinum 8488C"
    assert machine.cpu_model(tmp_path / "missing")  # falls back to the architecture, never empty


def test_record_and_signature_agree():
    record = machine.machine_record()
    assert record["cpus"] == os.cpu_count()
    assert isinstance(record["bfloat16_native"], bool)
    signature = machine.machine_signature(record)
    assert signature == machine.machine_signature()
    assert record["cpu_model"] in signature and f"{os.cpu_count()} CPUs" in signature
    other = {**record, "gpu": "NVIDIA H100", "torch_threads": record["torch_threads"] + 1}
    assert machine.machine_signature(other) != signature  # a GPU or another thread count is another kind
