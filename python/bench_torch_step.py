"""Times one MPL step in eager PyTorch, for comparison with `trainer bench`.

The step has the shape of the widely used PyTorch reimplementation of MPL: a teacher forward
on [x_l, u_w, u_s], a student forward/backward on [x_l, u_s] and its SGD step, the student's
labeled loss after its step (`loss_delta`: a forward only; `gradient`: a forward and a
backward, as the trainer's default feedback needs), the EMA update and the teacher's
backward and SGD step. Inputs are random tensors of CIFAR's shape: no augmentation and no
data loading are timed, so this is the bare compute of the step in PyTorch.

    python python/bench_torch_step.py [--steps 5] [--warmup 1] [--threads 2]
        [--batch 16] [--mu 7] [--feedback gradient|loss_delta] [--channels-last] [--bf16]

Prints one JSON line: secs_per_step, images_per_sec and the settings.
"""

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mpl_reference import WideResNet  # noqa: E402


def sgd(model, lr):
    decay = [p for n, p in model.named_parameters() if "bn" not in n and "bias" not in n]
    no_decay = [p for n, p in model.named_parameters() if "bn" in n or "bias" in n]
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, momentum=0.9, nesterov=True)


def mpl_step(teacher, student, ema, t_opt, s_opt, batch, feedback):
    x_l, y_l, u_w, u_s = batch
    n_l, n_u = x_l.shape[0], u_w.shape[0]

    t_logits = teacher(torch.cat([x_l, u_w, u_s]))
    t_l, t_w, t_s = t_logits[:n_l], t_logits[n_l:n_l + n_u], t_logits[n_l + n_u:]
    sup = F.cross_entropy(t_l, y_l, label_smoothing=0.15)
    soft = torch.softmax(t_w.detach() / 0.7, dim=-1)
    confidence, labels_w = soft.max(dim=-1)
    mask = confidence.ge(0.6).float()
    uda = (-(soft * F.log_softmax(t_s, dim=-1)).sum(-1) * mask).mean()
    pseudo = t_s.detach().argmax(dim=-1)

    s_logits = student(torch.cat([x_l, u_s]))
    s_loss = F.cross_entropy(s_logits[n_l:], pseudo, label_smoothing=0.15)
    loss_old = F.cross_entropy(s_logits[:n_l].detach(), y_l)
    s_opt.zero_grad()
    s_loss.backward()
    g_u = [p.grad.detach().clone() for p in student.parameters()]
    s_opt.step()
    with torch.no_grad():
        for e, p in zip(ema.parameters(), student.parameters()):
            e.mul_(0.995).add_(p, alpha=0.005)

    if feedback == "gradient":
        loss_new = F.cross_entropy(student(x_l), y_l)
        g_l = torch.autograd.grad(loss_new, list(student.parameters()))
        h = 0.05 * sum((a * b).sum() for a, b in zip(g_l, g_u)).item()
    else:
        with torch.no_grad():
            loss_new = F.cross_entropy(student(x_l), y_l)
        h = (loss_old - loss_new).item()

    t_loss = sup + 8.0 * uda + h * F.cross_entropy(t_s, pseudo)
    t_opt.zero_grad()
    t_loss.backward()
    t_opt.step()
    return t_loss.item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--mu", type=int, default=7)
    parser.add_argument("--feedback", choices=["gradient", "loss_delta"], default="gradient")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--bf16", action="store_true", help="forward passes under bf16 autocast")
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    teacher = WideResNet(10, depth=28, widen_factor=2, dropout=0.2).to(memory_format=fmt)
    student = WideResNet(10, depth=28, widen_factor=2, dropout=0.2).to(memory_format=fmt)
    ema = WideResNet(10, depth=28, widen_factor=2, dropout=0.2).to(memory_format=fmt)
    ema.load_state_dict(student.state_dict())
    teacher.train()
    student.train()
    t_opt, s_opt = sgd(teacher, 0.05), sgd(student, 0.05)

    def images(n):
        return torch.randn(n, 3, 32, 32).contiguous(memory_format=fmt)

    n_u = args.batch * args.mu
    batch = (images(args.batch), torch.randint(0, 10, (args.batch,)), images(n_u), images(n_u))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            mpl_step(teacher, student, ema, t_opt, s_opt, batch, args.feedback)

    for _ in range(args.warmup):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    secs = (time.perf_counter() - start) / args.steps

    print(json.dumps({
        "secs_per_step": round(secs, 3),
        "images_per_sec": round((args.batch + n_u) / secs, 1),
        "torch": torch.__version__,
        "threads": args.threads,
        "batch": args.batch,
        "mu": args.mu,
        "feedback": args.feedback,
        "channels_last": args.channels_last,
        "bf16": args.bf16,
        "steps": args.steps,
    }))


if __name__ == "__main__":
    main()
