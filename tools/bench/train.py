"""``python -m tools.bench train``: clips/s of one model step (forward, backward, Adam).

fp32/bf16, contiguous or channels-last, eager or torch.compile'd; and 1 vs N processes of CPU DDP (gloo).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from data import audio
from data.reader import pixels_layout
from models.base import model_input, prepare_inputs, unwrap_model
from models.cotex import cotex_loss
from models.losses import MultiTaskLoss
from models.registry import build_model
from tasks import get_layout
from tools.bench.common import (
    bench_device,
    cuda_sync,
    fmt,
    input_shape,
    input_spec,
    rates,
    summary,
    timed,
)
from utils.inputs import AUDIO_DB, PIXELS, InputSpec
from utils.optim import build_optimizer
from utils.tables import print_table

TASK_KEYS = ("expr", "au", "va")


def synthetic_batch(args: argparse.Namespace, spec: InputSpec, batch_size: int, seed: int = 0) -> dict:
    """A random raw batch of ``spec`` (uint8 pixels, dB audio windows) with labels, on the CPU: the model step
    does not care where the frames come from."""
    layout = get_layout(args.layout)
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (batch_size, spec.clip_len, spec.size, spec.size, spec.channels), generator=g,
                           dtype=torch.uint8)
    b = {PIXELS: pixels_layout(frames, spec),
         "expr": torch.randint(0, layout.num_expr_classes, (batch_size,), generator=g),
         "au": torch.randint(0, 2, (batch_size, layout.num_au), generator=g).float(),
         "va": torch.rand(batch_size, 2, generator=g) * 2 - 1}
    if spec.has_audio:  # −100 … 0 dB, float16 as the database stores it
        shape = (batch_size, 1, audio.N_MELS, spec.audio_columns)
        b[AUDIO_DB] = (torch.rand(shape, generator=g) * audio.SILENCE_DB).half()
    return b


def make_step(model: nn.Module, batch: dict, layout: str, device: torch.device, amp: str,
              channels_last: bool) -> Callable[[], None]:
    """One forward + backward + optimiser step on ``batch`` (MTMT's Adam settings; for a model with parameter
    groups, e.g. EMMA, AdamW over its groups with weight decay 0.05 as its recipe has it; CoTEX's loss is its
    co-training loss over the peers, two peers unmasked as the shipped script); the inputs are made by
    the model's ``prepare`` hook once, before (the step is timed, not the input step)."""
    make_loss = getattr(unwrap_model(model), "make_loss", None)  # a model's own loss (cnu), else the default
    criterion = (make_loss() if make_loss is not None else None) or MultiTaskLoss(layout)
    if hasattr(unwrap_model(model), "param_groups"):
        opt = build_optimizer(model, "adamw", 5e-4, 0.05)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=5e-4, weight_decay=5e-5)
    inputs = prepare_inputs(model, batch, device, channels_last=channels_last)
    targets = {k: batch[k].to(device) for k in TASK_KEYS}
    if hasattr(unwrap_model(model), "peer_logits"):  # CoTEX: its peers' co-training loss (N×B×6 in training)
        def loss_of(out):
            return cotex_loss(out, targets["expr"])[0]
    else:
        def loss_of(out):
            return criterion(out, targets)[0]

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
            out = model(inputs)
        loss = loss_of(out)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def new_model(args: argparse.Namespace, device: torch.device, channels_last: bool) -> nn.Module:
    """A fresh ``--model`` for the bench's input (seeded), in training mode on ``device``."""
    torch.manual_seed(args.seed)
    variant = args.model_size if args.model in ("emma", "cotex", "cnu") else None
    options = {"history_grad": not args.no_history_grad} if args.model == "cnu" else None
    model = build_model(args.model, args.layout, input_spec=input_spec(args), variant=variant,
                        options=options).to(device).train()
    return model.to_channels_last() if channels_last else model


def train_configs(args: argparse.Namespace, device: torch.device) -> list[dict]:
    compile_on = args.compile == "on" or (args.compile == "auto" and device.type == "cuda")
    out = []
    for comp in ([False, True] if compile_on else [False]):
        for fmt_name in args.memory_formats:
            for amp in args.precisions:
                out.append({"amp": amp, "channels_last": fmt_name == "channels-last", "compile": comp})
    return out


def bench_train_config(args: argparse.Namespace, device: torch.device, cfg: dict) -> dict:
    model = new_model(args, device, cfg["channels_last"])
    if cfg["compile"]:
        model = torch.compile(model)
    step = make_step(model, synthetic_batch(args, model_input(model), args.batch_size), args.layout, device,
                     cfg["amp"], cfg["channels_last"])
    t0 = time.perf_counter()
    warm = max(args.warmup, 2 if cfg["compile"] else 1)
    for _ in range(warm):
        step()
    sync = cuda_sync(device)
    if sync:
        sync()
    first = time.perf_counter() - t0
    secs = timed(step, args.repeats, 0, sync)
    return {**cfg, "warmup_seconds": first, "step_seconds": summary(secs),
            "clips_per_s": rates(args.batch_size, secs)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    """One process of the DDP measurement (gloo on CPU): same steps as the single-process run."""
    import torch.distributed as dist

    torch.set_num_threads(args.ddp_threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        device = torch.device("cpu")
        model = new_model(args, device, False)
        if world > 1:
            model = nn.parallel.DistributedDataParallel(model)
        step = make_step(model, synthetic_batch(args, model_input(model), args.batch_size, seed=rank), args.layout,
                         device, "fp32", False)
        for _ in range(max(args.warmup, 1)):
            step()
        dist.barrier()
        cpu: list[float] = []

        def cpu_step() -> None:
            c0 = time.process_time()
            step()
            cpu.append(time.process_time() - c0)

        secs = timed(cpu_step, args.repeats, 0)
        flat = torch.zeros(sum(p.numel() for p in model.parameters()))  # every gradient, as one allreduce
        comm = timed(lambda: dist.all_reduce(flat), args.repeats, 1) if world > 1 else []
        if rank == 0:
            Path(out).write_text(json.dumps({"step": secs, "cpu": cpu, "allreduce": comm}))
    finally:
        dist.destroy_process_group()


def ddp_run(args: argparse.Namespace, world: int) -> dict[str, list[float]]:
    import torch.multiprocessing as tmp

    with tempfile.TemporaryDirectory() as d:
        out = str(Path(d) / "steps.json")
        tmp.spawn(_ddp_worker, args=(world, free_port(), args, out), nprocs=world, join=True)
        return json.loads(Path(out).read_text())


def bench_ddp(args: argparse.Namespace) -> dict:
    """1 process vs ``--ddp-procs`` processes (gloo, CPU, ``--ddp-threads`` threads each), same per-process batch.

    Also per step the CPU seconds of rank 0 (equal in both runs when the cores are free: a longer wall
    time at equal CPU time is waiting, for the other rank or for a core) and one allreduce of every
    gradient alone.
    """
    single = ddp_run(args, 1)
    multi = ddp_run(args, args.ddp_procs)
    one, many = rates(args.batch_size, single["step"]), rates(args.batch_size * args.ddp_procs, multi["step"])
    return {"procs": args.ddp_procs, "threads_per_proc": args.ddp_threads, "backend": "gloo",
            "per_proc_batch": args.batch_size,
            "single": {"step_seconds": summary(single["step"]), "cpu_seconds": summary(single["cpu"]),
                       "clips_per_s": one},
            "multi": {"step_seconds": summary(multi["step"]), "cpu_seconds": summary(multi["cpu"]),
                      "allreduce_seconds": summary(multi["allreduce"]), "clips_per_s": many},
            "efficiency": many["median"] / (args.ddp_procs * one["median"])}


def bench_train(args: argparse.Namespace) -> dict:
    device = bench_device(args.device)
    result: dict = {"device": str(device), "batch_size": args.batch_size, "model": args.model,
                    "input": input_spec(args).to_dict(), "threads": torch.get_num_threads(), "configs": [], "notes": []}
    if args.compile == "auto" and device.type == "cpu":
        result["notes"].append("torch.compile skipped on CPU by default (compiling the forward+backward graph "
                               "takes minutes on a few cores); --compile on to include it")
    for cfg in train_configs(args, device):
        try:
            result["configs"].append(bench_train_config(args, device, cfg))
        except Exception as e:  # noqa: BLE001 - e.g. compile unsupported here: report and go on
            result["notes"].append(f"{cfg}: failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
        print(".", end="", flush=True)
    if args.ddp_procs > 1 and device.type == "cpu":
        result["ddp"] = bench_ddp(args)
    elif args.ddp_procs > 1:
        result["notes"].append("DDP measured on CPU only (one process per GPU needs several GPUs)")
    ok = [c for c in result["configs"] if "clips_per_s" in c]
    if ok:
        result["best_clips_per_s"] = max(c["clips_per_s"]["median"] for c in ok)
    print_train(result)
    return result


def print_train(r: dict) -> None:
    rows = [[c2["amp"], "on" if c2["channels_last"] else "off", "on" if c2["compile"] else "off",
             fmt(c2["step_seconds"], 2), fmt(c2["clips_per_s"], 2), f"{c2['warmup_seconds']:.1f}"]
            for c2 in r["configs"]]
    unit = "images/s" if r["input"]["kind"] == "frame" else "clips/s"
    print_table(["precision", "channels-last", "compile", "s/step", unit, "warm-up s"], rows, right=True,
                title=f"train step (fwd+bwd+optimiser), {r['device']}, {r['threads']} threads, batch {r['batch_size']} "
                f"of {input_shape(r['input'])}")
    if "ddp" in r:
        d = r["ddp"]
        print_table(title=f"DDP on CPU ({d['backend']}, {d['threads_per_proc']} thread(s) per process, batch "
                    f"{d['per_proc_batch']} per process)", right=True,
                    header=["processes", "s/step", "CPU s/step (rank 0)", "clips/s"],
                    rows=[[1, fmt(d["single"]["step_seconds"], 2), fmt(d["single"]["cpu_seconds"], 2),
                           fmt(d["single"]["clips_per_s"], 2)],
                          [d["procs"], fmt(d["multi"]["step_seconds"], 2), fmt(d["multi"]["cpu_seconds"], 2),
                           fmt(d["multi"]["clips_per_s"], 2)]])
        print(f"one allreduce of all gradients alone: {fmt(d['multi']['allreduce_seconds'], 2)} s")
        print(f"scaling efficiency {d['efficiency']:.0%} (= {d['procs']}-process clips/s / ({d['procs']} x 1-process))")
    for n in r["notes"]:
        print(f"note: {n}")
