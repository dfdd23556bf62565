"""The Gaussian optimisation engine and its strategies (recon_core.optim, recon_core.strategies)."""

from __future__ import annotations

import math

import pytest
import torch

from recon_core import CombinationError, GaussianRepresentation, OptimConfig, StrategyConfig
from recon_core.cameras import Cameras
from recon_core.geometry import quat_to_rotmat
from recon_core.errors import InputError
from recon_core.optim import Adam, GaussianOptimizer, auto_max_gaussians, resolve_schedule
from recon_core.strategies import _covariance_torch, _relocation_torch, install_gsplat_cpu_ops
from recon_plugins.gaussians.renderers import TorchGaussianRenderer


class Blobs(GaussianRepresentation):
    name = "test-blobs"


def blobs(n: int = 200, seed: int = 0) -> Blobs:
    g = torch.Generator().manual_seed(seed)
    rep = Blobs(sh_degree=0)
    rep.set_splats({
        "means": torch.rand(n, 3, generator=g) - 0.5,
        "quats": torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
        "scales": torch.full((n, 3), math.log(0.04)),
        "opacities": torch.full((n,), 0.5),
        "sh0": torch.randn(n, 1, 3, generator=g) * 0.5,
        "shN": torch.zeros(n, 0, 3),
    })
    return rep


def camera(size: int = 24) -> Cameras:
    c2w = torch.eye(4)
    c2w[2, 3] = -2.0  # looking along +z at the origin
    K = torch.tensor([[size * 1.2, 0, size / 2], [0, size * 1.2, size / 2], [0, 0, 1.0]])
    return Cameras.create(K, c2w[None], size, size)


def train(rep: Blobs, strategy: StrategyConfig, steps: int, target: torch.Tensor) -> tuple[GaussianOptimizer, list[int]]:
    renderer = TorchGaussianRenderer()
    engine = GaussianOptimizer(rep, OptimConfig(strategy=strategy, steps_scaler="1"), scene_scale=1.0, total_steps=steps,
                               generator=torch.Generator().manual_seed(0))  # the counts as written
    cam = camera(target.shape[0])
    counts = []
    for step in range(steps):
        engine.schedule(step)
        out = renderer.render(rep, cam, background=torch.ones(3))
        engine.before_backward(step, out.info)
        loss = (out.rgb[0] - target).abs().mean() + engine.regularisation()
        engine.step(loss, step, out.info, cam)
        assert all(p.grad is None for p in rep.splats.values())  # dropped once used: not held through the next render
        counts.append(len(rep))
    return engine, counts


def _relocation_loops(opacity: float, scale: list[float], ratio: int, binoms: torch.Tensor) -> tuple[float, list[float]]:
    """gsplat's relocation kernel, written as its loops (independent of the vectorised version)."""
    new_o = 1.0 - (1.0 - opacity) ** (1.0 / ratio)
    denom = 0.0
    for i in range(1, ratio + 1):
        for k in range(i):
            denom += float(binoms[i - 1, k]) * ((-1.0) ** k / math.sqrt(k + 1)) * new_o ** (k + 1)
    return new_o, [opacity / denom * s for s in scale]


def test_relocation_matches_the_kernel_loops() -> None:
    n_max = 51
    binoms = torch.zeros(n_max, n_max, dtype=torch.float64)
    for n in range(n_max):
        for k in range(n + 1):
            binoms[n, k] = math.comb(n, k)
    g = torch.Generator().manual_seed(1)
    opac = torch.rand(40, generator=g, dtype=torch.float64) * 0.9 + 0.05
    scales = torch.rand(40, 3, generator=g, dtype=torch.float64) + 0.1
    ratios = torch.randint(1, 12, (40,), generator=g)
    new_o, new_s = _relocation_torch(opac, scales, ratios, binoms)
    for i in range(40):
        o_ref, s_ref = _relocation_loops(float(opac[i]), scales[i].tolist(), int(ratios[i]), binoms)
        assert float(new_o[i]) == pytest.approx(o_ref, rel=1e-9)
        assert new_s[i].tolist() == pytest.approx(s_ref, rel=1e-7)  # alternating sums cancel digits
    # one copy is the Gaussian itself
    same_o, same_s = _relocation_torch(opac, scales, torch.ones(40, dtype=torch.int64), binoms)
    assert torch.allclose(same_o, opac) and torch.allclose(same_s, scales)


def test_cpu_covariance_is_r_s2_rt() -> None:
    from scipy.spatial.transform import Rotation

    q = torch.nn.functional.normalize(torch.randn(5, 4, dtype=torch.float64), dim=-1)
    s = torch.rand(5, 3, dtype=torch.float64) + 0.1
    cov, pre = _covariance_torch(q, s)
    R = torch.from_numpy(Rotation.from_quat(q[:, [1, 2, 3, 0]].numpy()).as_matrix())  # scipy: xyzw
    expected = R @ torch.diag_embed(s**2) @ R.transpose(1, 2)
    assert torch.allclose(cov, expected, atol=1e-12)
    assert torch.allclose(cov @ pre, torch.eye(3, dtype=torch.float64).expand(5, 3, 3), atol=1e-9)
    assert torch.allclose(quat_to_rotmat(q), R, atol=1e-12)


def test_gsplat_ops_on_cpu_tensors_use_the_torch_versions() -> None:
    install_gsplat_cpu_ops()
    import gsplat.strategy.ops as ops

    q = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    cov, _ = ops.quat_scale_to_covar_preci(q, torch.ones(3, 3) * 0.5, compute_preci=False)
    assert torch.allclose(cov, 0.25 * torch.eye(3).expand(3, 3, 3), atol=1e-6)


@pytest.mark.parametrize("name", ["default", "gsplat-default"])
def test_clone_split_strategies_grow_the_set(name: str) -> None:
    rep = blobs()
    target = torch.zeros(24, 24, 3)
    target[6:18, 6:18] = torch.tensor([0.9, 0.1, 0.1])
    strategy = StrategyConfig(name=name, refine_start=2, refine_every=5, grow_grad2d=1e-6, reset_every=10_000)
    _, counts = train(rep, strategy, 12, target)
    assert counts[0] == 200 and max(counts) > 200  # low threshold: Gaussians were cloned or split
    assert all(torch.isfinite(p).all() for p in rep.splats.values())


def test_mcmc_relocates_dead_and_adds_five_percent_up_to_the_cap() -> None:
    rep = blobs(n=100)
    with torch.no_grad():
        rep.splats["opacities"][:10] = -20.0  # dead: below min opacity
    target = torch.full((24, 24, 3), 0.3)
    strategy = StrategyConfig(name="mcmc", refine_start=0, refine_every=3, max_gaussians=108)
    _, counts = train(rep, strategy, 7, target)
    assert counts == [100, 100, 100, 105, 105, 105, 108]  # +5 % at steps 3 and 6, capped at 108
    assert float(torch.sigmoid(rep.splats["opacities"].detach()).min()) > 0.005 * 0.99  # the dead ones were moved


def test_gsplat_default_without_renderer_info_is_a_clear_error() -> None:
    rep = blobs()
    engine = GaussianOptimizer(rep, OptimConfig(strategy=StrategyConfig(name="gsplat-default")), scene_scale=1.0, total_steps=1)
    with pytest.raises(CombinationError, match="means2d"):
        engine.before_backward(0, {})


def test_engine_trains_only_refinable_entries_and_resumes_identically() -> None:
    class Frozen(GaussianRepresentation):
        name = "test-frozen"
        refinable = frozenset({"sh0", "opacities"})

    def make() -> Frozen:
        rep = Frozen(sh_degree=0)
        rep.set_splats(blobs(50).splat_values())
        return rep

    target = torch.full((24, 24, 3), 0.2)
    cfg = OptimConfig(densify=False)
    cam = camera()

    def run(rep: Frozen, engine: GaussianOptimizer, steps: range) -> None:
        for step in steps:
            out = TorchGaussianRenderer().render(rep, cam, background=torch.ones(3))
            engine.step((out.rgb[0] - target).abs().mean(), step, out.info, cam)

    a = make()
    means0 = a.splats["means"].detach().clone()
    ea = GaussianOptimizer(a, cfg, scene_scale=1.0, total_steps=6)
    assert set(ea.optimizers) == {"sh0", "opacities"}
    run(a, ea, range(6))
    assert torch.equal(a.splats["means"], means0)  # not refinable: untouched

    b = make()
    eb = GaussianOptimizer(b, cfg, scene_scale=1.0, total_steps=6)
    run(b, eb, range(3))
    state, splats = eb.state_dict(), b.splat_values()
    c = make()
    c.set_splats(splats)
    ec = GaussianOptimizer(c, cfg, scene_scale=1.0, total_steps=6)
    ec.load_state_dict(state)
    run(c, ec, range(3, 6))
    for key in ("sh0", "opacities"):
        assert torch.equal(c.splats[key], a.splats[key])


def test_steps_scaler_scales_every_schedule_as_gsplat_with_an_epoch_floor() -> None:
    rep = blobs()
    cfg = OptimConfig(steps_scaler=str(2000 / 30000))  # gsplat's 30 000-step schedule compressed into 2 000 steps
    engine = GaussianOptimizer(rep, cfg, scene_scale=1.0, total_steps=2000, views=48)
    s = engine.strategy_config
    assert (s.refine_start, s.refine_stop, s.reset_every) == (33, 1000, 200)  # int(x * 1/15), as adjust_steps
    assert s.refine_every == 48  # int(100 / 15) = 6 would densify on 6 views: one epoch at least
    assert engine.sh_degree_interval == 66
    engine.schedule(66 * 2)
    assert rep.active_sh_degree == 0  # the blobs store degree 0 only
    literal = GaussianOptimizer(blobs(), OptimConfig(steps_scaler="1"), scene_scale=1.0, total_steps=2000, views=48)
    s = literal.strategy_config  # gsplat's counts as written
    assert (s.refine_start, s.refine_stop, s.refine_every, s.reset_every, literal.sh_degree_interval) == (500, 15000, 100, 3000, 1000)
    for bad in ("0", "-1", "fast", "inf"):
        with pytest.raises(InputError, match="steps_scaler"):
            OptimConfig(steps_scaler=bad)


def sh_blobs(n: int = 200) -> Blobs:
    rep = Blobs(sh_degree=3)
    values = blobs(n).splat_values()
    rep.set_splats({**values, "shN": torch.zeros(n, 15, 3)})
    return rep


def test_auto_schedule_scales_with_steps_and_keeps_floors() -> None:
    """README's 500-step run over 40 views of 96 x 96: every schedule happens inside the run."""
    _, sh, s = resolve_schedule(OptimConfig(), 500, views=40, pixels=40 * 96 * 96)
    assert sh == 40  # 1000 / 60 = 16 steps: at least one epoch per SH degree
    assert (s.refine_every, s.refine_start, s.refine_stop) == (40, 80, 250)  # an epoch; 2 periods; half the run
    assert s.reset_every > 500  # a reset at 200 (5 periods) leaves 7.5 epochs to recover, fewer than 10: none
    assert s.max_gaussians == str(40 * 96 * 96 // 128) == "2880"
    _, _, s = resolve_schedule(OptimConfig(), 1000, views=40)
    assert s.reset_every == 200  # resets at 200 and 400: 15 epochs left after the last
    _, sh, s = resolve_schedule(OptimConfig(), 7000, views=48, pixels=48 * 200 * 200)  # floors no longer bind
    assert (sh, s.refine_start, s.refine_stop, s.reset_every, s.max_gaussians) == (233, 116, 3500, 700, "15000")
    _, sh, s = resolve_schedule(OptimConfig(), 30000, views=48)
    assert (sh, s.refine_start, s.refine_stop, s.refine_every, s.reset_every) == (1000, 500, 15000, 100, 3000)  # gsplat's
    assert s.max_gaussians == "1000000"  # pixels unknown: gsplat MCMC's cap
    # gsplat's literal schedule: with 500 steps nothing happens; explicit caps stay
    _, sh, s = resolve_schedule(OptimConfig(steps_scaler="1", strategy=StrategyConfig(max_gaussians="0")), 500, views=40)
    assert (sh, s.refine_start, s.reset_every, s.max_gaussians) == (1000, 500, 3000, "0")
    assert auto_max_gaussians(10) == 1000 and auto_max_gaussians(10**12) == 1_000_000
    with pytest.raises(InputError, match="max_gaussians"):
        StrategyConfig(max_gaussians="-3")


def test_auto_schedule_densifies_resets_and_raises_sh_at_the_expected_steps() -> None:
    """1000 steps over 8 views: refine every epoch (8) after 2 periods, reset every 5 periods."""
    rep = sh_blobs()
    target = torch.zeros(24, 24, 3)
    target[6:18, 6:18] = torch.tensor([0.9, 0.1, 0.1])
    cfg = OptimConfig(strategy=StrategyConfig(grow_grad2d=1e-9))  # every visible Gaussian grows at a refine step
    engine = GaussianOptimizer(rep, cfg, scene_scale=1.0, total_steps=1000, views=8, pixels=128 * 1000)
    s = engine.strategy_config
    assert (s.refine_every, s.refine_start, s.reset_every, s.max_gaussians, engine.sh_degree_interval) == (8, 16, 100, "1000", 33)
    renderer, cam = TorchGaussianRenderer(), camera()
    events: dict[int, dict[str, int]] = {}
    degrees = {}
    for step in range(101):
        at = engine.schedule(step)
        assert at == step  # no budget: the schedule step is the step
        degrees[step] = rep.active_sh_degree
        out = renderer.render(rep, cam, background=torch.ones(3))
        engine.before_backward(at, out.info)
        report = engine.step((out.rgb[0] - target).abs().mean(), at, out.info, cam)
        if report:
            events[step] = report
    grown = sorted(k for k, r in events.items() if r.get("duplicated", 0) + r.get("split", 0) > 0)
    assert grown[:2] == [24, 32] and set(grown) <= set(range(24, 101, 8))  # after refine_start = 16, every epoch
    assert len(rep) == 1000  # grown up to max_gaussians = 128 000 pixels / 128
    assert sorted(k for k, r in events.items() if r.get("reset")) == [100]  # every 5 refine periods (40 < 100 scaled)
    assert (degrees[0], degrees[32], degrees[33], degrees[66], degrees[99], degrees[100]) == (0, 0, 1, 2, 3, 3)


def test_budget_fraction_moves_the_schedule_without_skipping_refine_steps() -> None:
    engine = GaussianOptimizer(blobs(), OptimConfig(), scene_scale=1.0, total_steps=500, views=40, pixels=40 * 96 * 96)
    lr0 = engine.optimizers["means"].param_groups[0]["lr"]
    at = [engine.schedule(step, fraction=min(step / 20, 1.0)) for step in range(25)]  # the budget runs 25 x faster
    assert at == sorted(set(at))  # strictly increasing
    assert [a for a in at if 0 < a < 250 and a % 40 == 0] == [40, 80, 120, 160, 200, 240]  # each refine step, once
    assert engine.strategy_config.refine_stop == 250
    assert at[-1] >= 480  # then it follows the budget to the end
    lr = engine.optimizers["means"].param_groups[0]["lr"]
    assert lr == pytest.approx(lr0 * 0.01 ** min(at[-1] / 500, 1.0))  # the lr decayed as far as the budget


# ------------------------------------------------------------------ Adam without torch.optim


def _adam_pair(seed: int = 0, lr: float = 0.01, eps: float = 1e-15):
    g = torch.Generator().manual_seed(seed)
    start = torch.randn(50, 3, generator=g)
    a, b = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    return a, b, Adam([a], lr=lr, eps=eps), torch.optim.Adam([b], lr=lr, eps=eps), g


def test_adam_matches_torch_bit_for_bit() -> None:
    """recon_core.optim.Adam takes torch.optim.Adam's steps exactly (same floats), including after
    a learning-rate change, a reset of the moments and rows added as a strategy adds them."""
    from recon_core.strategies import _update

    a, b, ours, ref, g = _adam_pair()
    for i in range(30):
        grad = torch.randn(a.shape, generator=g) * (1 + i)
        for p, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            p.grad = grad.clone()
            opt.step()
        if i == 10:
            for opt in (ours, ref):
                opt.param_groups[0]["lr"] = 0.003
        assert torch.equal(a, b), i
        assert torch.equal(ours.state[a]["exp_avg_sq"], ref.state[b]["exp_avg_sq"])
        assert ours.state[a]["step"].item() == ref.state[b]["step"].item() == i + 1
    # a strategy grows both the same way (new rows, zero moments, the step counter kept)
    pa, pb = {"x": a}, {"x": b}
    for params, opt in ((pa, ours), (pb, ref)):
        _update(params, {"x": opt}, lambda n, p: torch.cat([p, p[:5]]), lambda n, v: torch.cat([v, torch.zeros_like(v[:5])]))
    grad = torch.randn(55, 3, generator=g)
    for params, opt in ((pa, ours), (pb, ref)):
        params["x"].grad = grad.clone()
        opt.step()
    assert torch.equal(pa["x"], pb["x"])


def test_adam_state_dict_round_trips_and_reads_torch_checkpoints() -> None:
    a, b, ours, ref, g = _adam_pair(1)
    for _ in range(3):
        grad = torch.randn(a.shape, generator=g)
        a.grad, b.grad = grad.clone(), grad.clone()
        ours.step(), ref.step()
    sd = ours.state_dict()
    assert sd["param_groups"][0]["params"] == [0] and set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    # a fresh Adam loads ours and torch's (the layout checkpoints hold) and then steps identically
    for saved in (sd, ref.state_dict()):
        c = torch.nn.Parameter(a.detach().clone())
        other = Adam([c], lr=0.5)
        other.load_state_dict(saved)
        assert other.param_groups[0]["lr"] == 0.01 and other.param_groups[0]["eps"] == 1e-15
        grad = torch.randn(a.shape, generator=torch.Generator().manual_seed(7))
        c.grad, a.grad = grad.clone(), grad.clone()
        other.step()
        check = Adam([torch.nn.Parameter(a.detach().clone())], lr=0.01, eps=1e-15)
        check.load_state_dict(sd)
        check.param_groups[0]["params"][0].grad = grad.clone()
        check.step()
        assert torch.equal(c, check.param_groups[0]["params"][0])
    with pytest.raises(ValueError, match="different number"):
        Adam([torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))]).load_state_dict(sd)


def test_gaussian_training_does_not_import_torch_dynamo() -> None:
    """The engine's optimizers keep torch._dynamo (about 150 MB resident) out of a training run."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from recon_core.optim import Adam\n"
        "p = torch.nn.Parameter(torch.zeros(3)); opt = Adam([p], lr=0.1)\n"
        "(p - 1).square().sum().backward(); opt.step(); opt.zero_grad()\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------ the fused CPU Adam kernel


def _kernel_or_skip():
    from recon_core.optim import _adam_kernel

    kernel = _adam_kernel()
    if kernel is None:
        pytest.skip("the C++ extension is unavailable (no compiler or RECON_NO_CPP=1)")
    return kernel


def _ulps(a: torch.Tensor, b: torch.Tensor) -> int:
    """Largest distance in units in the last place between two tensors of one float dtype."""
    itype = torch.int32 if a.dtype == torch.float32 else torch.int64
    ia, ib = a.contiguous().view(itype).to(torch.int64), b.contiguous().view(itype).to(torch.int64)
    assert bool(((ia < 0) == (ib < 0)).all()), "signs differ"
    return int((ia - ib).abs().max()) if a.numel() else 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("beta1", [0.9, 0.3])  # lerp's two formulas: weight 1 - beta1 below / above 0.5
def test_fused_adam_kernel_matches_torch_adam(dtype: torch.dtype, beta1: float) -> None:
    """The compiled step gives torch.optim.Adam's floats: the parameter and both moments after
    every one of 12 steps (a learning-rate change after 6), for sizes around its 1024-element
    blocks and SIMD widths, on one and two threads. Bit for bit with the x86-64 torch builds
    (MKL's sqrt, which torch's own sqrt uses); within 1 ulp elsewhere."""
    _kernel_or_skip()
    exact = torch.backends.mkl.is_available()
    threads = torch.get_num_threads()
    try:
        for n_threads, size in ((1, 1), (1, 17), (1, 1023), (2, 3 * 1024 + 5), (2, 70001)):
            torch.set_num_threads(n_threads)
            g = torch.Generator().manual_seed(size)
            start = torch.randn(size, 3, generator=g, dtype=dtype)
            a, b = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
            ours = Adam([a], lr=0.01, betas=(beta1, 0.99), eps=1e-15)
            ref = torch.optim.Adam([b], lr=0.01, betas=(beta1, 0.99), eps=1e-15)
            for i in range(12):
                grad = torch.randn(a.shape, generator=g, dtype=dtype) * (1 + i)
                a.grad, b.grad = grad.clone(), grad.clone()
                ours.step(), ref.step()
                if i == 5:
                    ours.param_groups[0]["lr"] = ref.param_groups[0]["lr"] = 0.003
                for x, y in ((a, b), (ours.state[a]["exp_avg"], ref.state[b]["exp_avg"]),
                             (ours.state[a]["exp_avg_sq"], ref.state[b]["exp_avg_sq"])):
                    if exact:
                        assert torch.equal(x, y), (size, i)
                    else:
                        assert _ulps(x.detach(), y.detach()) <= 1, (size, i)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_adam_kernel_with_exact_sqrt_is_within_one_ulp(dtype: torch.dtype) -> None:
    """The kernel's fallback for torch builds without MKL (std::sqrt, correctly rounded): from the
    same state, one step equals torch's moments exactly and its parameter within 1 ulp."""
    kernel = _kernel_or_skip()
    g = torch.Generator().manual_seed(3)
    p = torch.randn(5000, generator=g, dtype=dtype)
    grad = torch.randn(5000, generator=g, dtype=dtype)
    m, v = torch.randn(5000, generator=g, dtype=dtype) * 0.1, torch.rand(5000, generator=g, dtype=dtype)
    ref = torch.nn.Parameter(p.clone())
    opt = torch.optim.Adam([ref], lr=0.02, eps=1e-15)
    opt.state[ref] = {"step": torch.tensor(4.0), "exp_avg": m.clone(), "exp_avg_sq": v.clone()}
    ref.grad = grad.clone()
    opt.step()
    bc1, bc2_sqrt = 1 - 0.9**5, (1 - 0.999**5) ** 0.5
    kernel.adam_step(p, grad, m, v, 1 - 0.9, 0.999, 1 - 0.999, bc2_sqrt, 1e-15, -(0.02 / bc1), False)
    assert torch.equal(m, opt.state[ref]["exp_avg"]) and torch.equal(v, opt.state[ref]["exp_avg_sq"])
    assert _ulps(p, ref.detach()) <= 1
    assert not torch.equal(p, torch.randn(5000, generator=torch.Generator().manual_seed(3), dtype=dtype))  # it moved


def test_fused_adam_is_the_unfused_step_and_bumps_versions() -> None:
    """``fused=True`` (the kernel) and ``fused=False`` (the tensor operations) take the same
    steps; the kernel marks what it wrote as modified in place, as torch's in-place ops do, so
    autograd still refuses a graph that saved the old parameter."""
    _kernel_or_skip()
    a, b, ours, _, g = _adam_pair(5)
    plain = Adam([b], lr=0.01, eps=1e-15, fused=False)
    for _ in range(5):
        grad = torch.randn(a.shape, generator=g)
        a.grad, b.grad = grad.clone(), grad.clone()
        version = a._version
        ours.step(), plain.step()
        assert a._version > version
        assert torch.equal(a, b) and torch.equal(ours.state[a]["exp_avg_sq"], plain.state[b]["exp_avg_sq"])
    saved = (a * a).sum()  # saves a for its backward
    a.grad = torch.ones_like(a)
    ours.step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        saved.backward()
    # non-contiguous parameters take the tensor operations, with the same result
    c = torch.nn.Parameter(torch.randn(3, 50, generator=g).t())
    d = torch.nn.Parameter(c.detach().clone())
    oc, od = Adam([c], lr=0.01), torch.optim.Adam([d], lr=0.01)
    grad = torch.randn(50, 3, generator=g)
    c.grad, d.grad = grad.clone(), grad.clone()
    oc.step(), od.step()
    assert torch.equal(c, d)
