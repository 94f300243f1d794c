"""utils/dist.pick_device: the one device choice of training, prediction and the bench."""

import pytest
import torch

from utils import dist
from utils.dist import DeviceError, pick_device


def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def fake_gpus(monkeypatch, n: int) -> list:
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    return current


def test_auto_and_cpu_without_cuda(monkeypatch):
    no_cuda(monkeypatch)
    assert pick_device("auto") == torch.device("cpu") == pick_device("cpu")
    assert pick_device("auto", local_rank=0) == torch.device("cpu")


@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_without_cuda_is_one_line(monkeypatch, name):
    no_cuda(monkeypatch)
    with pytest.raises(DeviceError, match=f"--device {name} but no CUDA device is available"):
        pick_device(name)
    assert issubclass(DeviceError, RuntimeError)  # what train/test_val_aff2 report as a usage error


def test_unknown_name_is_one_line():
    with pytest.raises(DeviceError, match="--device 'gpu': ") as e:
        pick_device("gpu")
    assert "\n" not in str(e.value)


def test_auto_picks_the_gpu_when_there_is_one(monkeypatch):
    current = fake_gpus(monkeypatch, 2)
    assert pick_device("auto") == torch.device("cuda")  # a plain process: torch's current GPU
    assert pick_device("cuda:1") == torch.device("cuda", 1)
    assert current == []


def test_a_torchrun_process_takes_its_local_gpu(monkeypatch):
    current = fake_gpus(monkeypatch, 2)
    assert pick_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert pick_device("auto", local_rank=0) == torch.device("cuda", 0)
    assert current == [torch.device("cuda", 1), torch.device("cuda", 0)]
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert dist.init("auto").device == torch.device("cuda", 1)


def test_a_gpu_the_machine_lacks(monkeypatch):
    fake_gpus(monkeypatch, 1)
    with pytest.raises(DeviceError, match="--device cuda:3: this machine has 1 CUDA device"):
        pick_device("cuda:3")
    with pytest.raises(DeviceError, match="--device cuda:1: this machine has 1 CUDA device"):
        pick_device("cuda", local_rank=1)


def test_the_scripts_report_an_unusable_device_in_one_line(monkeypatch, tmp_path, capsys):
    import test_val_aff2
    from tools import bench

    no_cuda(monkeypatch)
    out = tmp_path / "out"
    assert test_val_aff2.main(["--checkpoint", str(tmp_path / "x.pth"), "--device", "cuda", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == "test_val_aff2.py: error: --device cuda but no CUDA device is available\n" and not out.exists()
    with pytest.raises(SystemExit, match="^tools.bench: --device cuda but no CUDA device is available$"):
        bench.bench_device("cuda")
