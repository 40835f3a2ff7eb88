"""Optimizer.SGD must follow torch.optim.SGD step for step, whether gradients come in .grad or in step()."""
import pytest
import torch

from Optimizer import SGD

NUM_STEPS = 12
SHAPES = [(3, 4), (5,), (2, 2, 2)]

# (group options shared by all parameters, per-group overrides or None for a single group)
CONFIGS = {
    "plain": (dict(lr=0.1), None),
    "momentum": (dict(lr=0.05, momentum=0.9), None),
    "dampening": (dict(lr=0.05, momentum=0.8, dampening=0.3), None),
    "nesterov": (dict(lr=0.05, momentum=0.9, nesterov=True), None),
    "weight_decay": (dict(lr=0.1, weight_decay=0.01), None),
    "nesterov_weight_decay": (dict(lr=0.05, momentum=0.7, nesterov=True, weight_decay=0.05), None),
    "dampening_weight_decay": (dict(lr=0.05, momentum=0.5, dampening=0.5, weight_decay=0.1), None),
    "groups": (dict(lr=0.1), [dict(lr=0.01, momentum=0.9, nesterov=True), dict(momentum=0.5),
                              dict(lr=0.3, weight_decay=0.02)]),
}


def make_params(seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen).requires_grad_() for shape in SHAPES]


def grad_sequence(num_steps: int = NUM_STEPS, seed: int = 1) -> list[list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(shape, generator=gen) for shape in SHAPES] for _ in range(num_steps)]


def make_optimizer(cls, params, config, **extra):
    defaults, groups = CONFIGS[config]
    if groups is None:
        return cls(params, **defaults, **extra)
    return cls([dict(params=[p], **g) for p, g in zip(params, groups, strict=True)], **defaults, **extra)


def set_grads(params, grads):
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()


@pytest.mark.parametrize("config", CONFIGS)
def test_matches_torch_sgd_step_for_step(config):
    ours_via_grad, ours_explicit, reference = make_params(), make_params(), make_params()
    opt_grad = make_optimizer(SGD, ours_via_grad, config)
    opt_explicit = make_optimizer(SGD, ours_explicit, config)
    opt_ref = make_optimizer(torch.optim.SGD, reference, config, foreach=False)
    for grads in grad_sequence():
        set_grads(ours_via_grad, grads)
        opt_grad.step()
        opt_explicit.step(grads=grads)
        set_grads(reference, grads)
        opt_ref.step()
        for a, b, c in zip(ours_via_grad, ours_explicit, reference, strict=True):
            # Same operations in the same order as torch's single-tensor path: bit-identical.
            assert torch.equal(a, c)
            assert torch.equal(b, c)
    for a, c in zip(ours_explicit, reference, strict=True):
        ref_buf = opt_ref.state[c].get("momentum_buffer")
        our_buf = opt_explicit.state[a].get("momentum_buffer")
        assert (our_buf is None) == (ref_buf is None)
        if ref_buf is not None:
            assert torch.equal(our_buf, ref_buf)
    assert not torch.equal(ours_explicit[0], make_params()[0])  # the steps did something


def test_first_momentum_step_sets_buffer_to_gradient():
    (p,) = make_params()[:1]
    opt = SGD([p], lr=0.1, momentum=0.9)
    grad = torch.ones_like(p)
    opt.step(grads=[grad])
    assert torch.equal(opt.state[p]["momentum_buffer"], grad)
    assert opt.state[p]["momentum_buffer"] is not grad


def test_explicit_grads_are_not_modified_and_take_precedence():
    params = make_params()
    opt = SGD(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1)
    grads = grad_sequence(1)[0]
    copies = [g.clone() for g in grads]
    for p in params:
        p.grad = torch.full_like(p, 1e6)  # ignored when grads are given
    before = [p.detach().clone() for p in params]
    opt.step(grads=grads)
    opt.step(grads=grads)
    for g, c in zip(grads, copies, strict=True):
        assert torch.equal(g, c)
    expected = make_params()
    ref = torch.optim.SGD(expected, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1, foreach=False)
    for _ in range(2):
        set_grads(expected, grads)
        ref.step()
    for p, e, b in zip(params, expected, before, strict=True):
        assert torch.equal(p, e)
        assert not torch.equal(p, b)


def test_none_entries_and_missing_grads_are_skipped():
    params = make_params()
    before = [p.detach().clone() for p in params]
    opt = SGD(params, lr=0.1, momentum=0.9)
    grads = grad_sequence(1)[0]
    opt.step(grads=[grads[0], None, grads[2]])
    assert torch.equal(params[1], before[1])
    assert params[1] not in opt.state
    assert not torch.equal(params[0], before[0]) and not torch.equal(params[2], before[2])

    params[0].grad, params[1].grad, params[2].grad = None, grads[1].clone(), None
    snapshot = [p.detach().clone() for p in params]
    opt.step()
    assert torch.equal(params[0], snapshot[0]) and torch.equal(params[2], snapshot[2])
    assert not torch.equal(params[1], snapshot[1])


def test_explicit_grads_span_all_groups_in_order():
    params = make_params()
    opt = SGD([dict(params=params[:2]), dict(params=params[2:], lr=0.0)], lr=1.0)
    ones = [torch.ones_like(p) for p in params]
    before = [p.detach().clone() for p in params]
    opt.step(grads=ones)
    assert torch.equal(params[0], before[0] - 1) and torch.equal(params[1], before[1] - 1)
    assert torch.equal(params[2], before[2])  # lr 0 in the second group


def test_closure_loss_is_returned():
    (p,) = make_params()[:1]
    opt = SGD([p], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (p ** 2).sum()
        loss.backward()
        return loss

    before = p.detach().clone()
    loss = opt.step(closure)
    assert torch.equal(loss, (before ** 2).sum())
    assert torch.allclose(p, before * 0.8)  # p - 0.1 * 2p


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=-0.1), "learning rate"),
    (dict(lr=0.1, momentum=-0.5), "momentum"),
    (dict(lr=0.1, weight_decay=-1.0), "weight_decay"),
    (dict(lr=0.1, nesterov=True), "Nesterov"),
    (dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "Nesterov"),
])
def test_invalid_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SGD(make_params(), **kwargs)


def test_wrong_grads_raise():
    params = make_params()
    opt = SGD(params, lr=0.1)
    grads = grad_sequence(1)[0]
    with pytest.raises(ValueError, match="expected one per parameter"):
        opt.step(grads=grads[:2])
    before = [p.detach().clone() for p in params]
    with pytest.raises(ValueError, match="shape"):
        opt.step(grads=[grads[0], grads[2], grads[1]])
    for p, b in zip(params, before, strict=True):  # nothing was half-updated
        assert torch.equal(p, b)
