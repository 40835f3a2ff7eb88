"""The server update (README, "The algorithm"): closed forms, hand-computed values, torch.optim.SGD, staleness."""
import pytest
import torch
from reference_math import nesterov_reference, weighted_average
from torch.testing import assert_close

from Utils.aggregation import (
    ADAPTIVE_COMPENSATIONS,
    CLIENT_MERGE,
    COMPENSATIONS,
    SERVER_COMPENSATIONS,
    ServerUpdate,
    StreamingMoments,
    client_weights,
    compensated_gradient,
    compensation_coefficient,
    merged_start,
    merged_upload,
    secant_coefficient,
    uploads_are_stale,
)

DIM = 64
ATOL = 1e-6  # rounding of w - (w - avg); the equalities below hold exactly in real arithmetic


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def random_deltas(num_updates: int, num_clients: int, seed: int = 0, scale: float = 0.05):
    """deltas[u][k]: what client k's training adds to its start model for update u (a toy trainer)."""
    gen = torch.Generator().manual_seed(seed)
    return [[scale * torch.randn(DIM, generator=gen) for _ in range(num_clients)]
            for _ in range(num_updates)]


def initial_model(seed: int = 42) -> torch.Tensor:
    return torch.randn(DIM, generator=torch.Generator().manual_seed(seed))


def run_server(server: ServerUpdate, deltas, weights, order=None) -> list[torch.Tensor]:
    """Drives `server` through len(deltas) updates, uploads L_k = upload_start + delta; returns G_1.."""
    models = []
    for round_deltas in deltas:
        moments = server.new_round()
        for k in order or range(len(weights)):
            moments.add(server.upload_start + round_deltas[k], weights[k])
        models.append(server.apply(moments).clone())
    return models


def direct_spread(prev, locals_, weights):
    """v = sum_k p_k (prev - L_k)^2, all uploads at once."""
    stacked = torch.stack([prev - local for local in locals_])
    return (torch.tensor(weights).unsqueeze(1) * stacked ** 2).sum(0)


# ---- weights and averages -------------------------------------------------------------------------

def test_client_weights():
    assert client_weights([10, 30]) == [0.25, 0.75]
    assert client_weights([0, 5, 15]) == [0.0, 0.25, 0.75]
    assert sum(client_weights([7, 11, 13])) == pytest.approx(1.0)


@pytest.mark.parametrize("counts, match", [([10, -1], ">= 0"), ([0, 0], "more than 0"), ([], "more than 0")])
def test_client_weights_reject_bad_counts(counts, match):
    with pytest.raises(ValueError, match=match):
        client_weights(counts)


def test_weighted_average_hand_computed():
    avg = weighted_average([t(3, 0, 2), t(1, 4, 0)], [0.25, 0.75])
    assert torch.equal(avg, t(1.5, 3, 0.5))


@pytest.mark.parametrize("weights, match", [([10, 30], "add up to 1"), ([1.5, -0.5], ">= 0")])
def test_streaming_moments_reject_bad_weights(weights, match):
    with pytest.raises(ValueError, match=match):
        moments = StreamingMoments(t(0.0))
        for value, weight in zip((t(1.0), t(2.0)), weights, strict=True):
            moments.add(value, weight)
        moments.result()


def test_streaming_moments_equal_batch_formulas():
    prev = initial_model()
    locals_ = [prev + d for d in random_deltas(1, 5)[0]]
    weights = client_weights([50, 10, 0, 25, 15])
    moments = StreamingMoments(prev)
    for local, p in zip(locals_, weights, strict=True):
        moments.add(local, p)
    avg, spread = moments.result()
    assert moments.num_added == 5
    assert torch.equal(avg, weighted_average(locals_, weights))  # same additions in the same order
    assert_close(spread, direct_spread(prev, locals_, weights), rtol=1e-6, atol=0)


def test_moments_without_the_spread_keep_the_average_and_only_spread_forms_ask_for_it():
    """The forms whose C does not use v skip it on the server's critical path: the same average, bit for bit;
    ServerUpdate accumulates v exactly for official and dcasgd."""
    prev = initial_model()
    locals_ = [prev + d for d in random_deltas(2, 4)[0]]
    weights = client_weights([40, 10, 25, 25])
    full, lean = StreamingMoments(prev), StreamingMoments(prev, with_spread=False)
    for local, p in zip(locals_, weights, strict=True):
        full.add(local, p)
        lean.add(local, p)
    assert torch.equal(lean.result()[0], full.result()[0]) and lean.result()[1] is None
    for mode in COMPENSATIONS:
        moments = ServerUpdate(prev, stale=mode != CLIENT_MERGE, compensation=mode).new_round()
        moments.add(locals_[0], 1.0)
        assert (moments.result()[1] is not None) == (mode in ("official", "dcasgd")), mode
    with pytest.raises(ValueError, match="built from the spread"):
        compensation_coefficient("dcasgd", None, LAMBD)
    assert compensation_coefficient("constant", None, LAMBD, CONSTANT) == CONSTANT


def test_streaming_moments_misuse():
    moments = StreamingMoments(t(0, 0, 0))
    with pytest.raises(RuntimeError, match="before any upload"):
        moments.result()
    with pytest.raises(ValueError, match="shape"):
        moments.add(t(1, 2), 1.0)
    with pytest.raises(ValueError, match=">= 0"):
        moments.add(t(1, 2, 3), -0.5)
    moments.add(t(1, 2, 3), 0.25)  # an upload is missing: 0.25 of the weight arrived
    with pytest.raises(ValueError, match="add up to 1"):
        moments.result()


# ---- compensation -------------------------------------------------------------------------------
# Hand-computed example: prev = [1, 0, 2], w = [2, 1, 3], uploads [3, 0, 2] (p 0.25) and [1, 4, 0]
# (p 0.75), lambda 0.5.
#   avg = [1.5, 3, 0.5]        g = prev - avg = [-0.5, -3, 1.5]       w - prev = [1, 1, 1]
#   prev - L_1 = [-2, 0, 0], prev - L_2 = [0, -4, 2]  ->  v = 0.25*[4, 0, 0] + 0.75*[0, 16, 4] = [1, 12, 3]
#   official C = 0.5 v^2 = [0.5, 72, 4.5]  ->  g_c = [0, 69, 6]
#   dcasgd   C = 0.5 v   = [0.5, 6, 1.5]   ->  g_c = [0, 3, 3]
#   full     C = 1                         ->  g_c = [0.5, -2, 2.5]  (= w - avg)
#   none     C = 0                         ->  g_c = [-0.5, -3, 1.5]
#   constant C = 0.25                      ->  g_c = [-0.25, -2.75, 1.75]
#   secant   no earlier start to compare with: C = comp_coef, here 0.25, as constant
PREV, CURRENT, LOCALS, WEIGHTS, LAMBD = t(1, 0, 2), t(2, 1, 3), [t(3, 0, 2), t(1, 4, 0)], [0.25, 0.75], 0.5
CONSTANT = 0.25
FIXED = [mode for mode in SERVER_COMPENSATIONS if mode not in ADAPTIVE_COMPENSATIONS]
EXPECTED_COEF = {"official": t(0.5, 72, 4.5), "dcasgd": t(0.5, 6, 1.5), "full": 1.0, "none": 0.0,
                 "constant": CONSTANT}
EXPECTED_GC = {"official": t(0, 69, 6), "dcasgd": t(0, 3, 3), "full": t(0.5, -2, 2.5),
               "none": t(-0.5, -3, 1.5), "constant": t(-0.25, -2.75, 1.75), "secant": t(-0.25, -2.75, 1.75)}


def hand_moments():
    moments = StreamingMoments(PREV)
    for local, p in zip(LOCALS, WEIGHTS, strict=True):
        moments.add(local, p)
    return moments.result()


def test_hand_computed_moments():
    avg, spread = hand_moments()
    assert torch.equal(avg, t(1.5, 3, 0.5))
    assert torch.equal(spread, t(1, 12, 3))


@pytest.mark.parametrize("mode", FIXED)
def test_compensation_hand_computed(mode):
    avg, spread = hand_moments()
    coef = compensation_coefficient(mode, spread, LAMBD, CONSTANT)
    if isinstance(EXPECTED_COEF[mode], float):
        assert coef == EXPECTED_COEF[mode]
    else:
        assert torch.equal(coef, EXPECTED_COEF[mode])
    inputs = [x.clone() for x in (PREV, avg, CURRENT, spread)]
    g_c = compensated_gradient(PREV, avg, CURRENT, coef)
    assert torch.equal(g_c, EXPECTED_GC[mode])
    for before, after in zip(inputs, (PREV, avg, CURRENT, spread), strict=True):
        assert torch.equal(before, after)  # pure: nothing modified in place


@pytest.mark.parametrize("mode", SERVER_COMPENSATIONS)
def test_server_update_hand_computed(mode):
    """Update 1 takes G_0 = PREV to G_1 = CURRENT (no staleness yet); update 2's uploads started from
    G_0 = PREV, so with mu 0 and server_lr 1: G_2 = CURRENT - g_c."""
    server = ServerUpdate(PREV, stale=True, compensation=mode, lambd=LAMBD, comp_coef=CONSTANT)
    moments = server.new_round()
    moments.add(CURRENT, 1.0)
    assert torch.equal(server.apply(moments), CURRENT)
    assert torch.equal(server.upload_start, PREV)
    moments = server.new_round()
    for local, p in zip(LOCALS, WEIGHTS, strict=True):
        moments.add(local, p)
    assert torch.equal(server.apply(moments), CURRENT - EXPECTED_GC[mode])
    assert torch.equal(server.upload_start, CURRENT)


def test_full_compensation_returns_the_average_from_any_start():
    """full: g_c = w - avg, so with mu 0 and server_lr 1 the stale update still lands on avg."""
    avg, spread = hand_moments()
    assert torch.equal(CURRENT - compensated_gradient(PREV, avg, CURRENT, 1.0), avg)


def test_secant_coefficient_hand_computed():
    """<g_u - g_{u-1}, prev_u - prev_{u-1}> / |prev_u - prev_{u-1}|^2, clipped to [0, 1]."""
    assert secant_coefficient(t(1, 0), t(0, 0), t(2, 0), t(0, 0)) == 0.5       # 2 / 4
    assert secant_coefficient(t(1, 2), t(0, 0), t(1, 1), t(0, -1)) == 1.0      # 5 / 5
    assert secant_coefficient(t(4, 0), t(0, 0), t(2, 0), t(0, 0)) == 1.0       # 8 / 4, clipped
    assert secant_coefficient(t(-1, 0), t(0, 0), t(2, 0), t(0, 0)) == 0.0      # -2 / 4, clipped
    assert secant_coefficient(t(1, 0), t(0, 0), t(3, 3), t(3, 3)) is None      # the start did not move


def quadratic_uploads(server: ServerUpdate, optima, rate: float) -> list[torch.Tensor]:
    """A local round on a quadratic that goes the fraction `rate` of the way to the client's optimum."""
    start = server.upload_start
    return [start - rate * (start - optimum) for optimum in optima]


@pytest.mark.parametrize("rate", [0.3, 0.6])
def test_exact_coefficient_makes_the_stale_pipeline_fedavg(rate):
    """With C = a (the fraction of the way one round goes) the one-version-stale update
    reproduces FedAvg's progress per round: g_c = a (prev - opt) + a (w - prev) = a (w - opt)."""
    optima = [initial_model(seed) for seed in (1, 2, 3)]
    weights = client_weights([20, 50, 30])
    fedavg = ServerUpdate(initial_model(), stale=False)
    overlap = ServerUpdate(initial_model(), stale=True, compensation="constant", comp_coef=rate)
    secant = ServerUpdate(initial_model(), stale=True, compensation="secant", comp_coef=rate)
    for _ in range(6):
        for server in (fedavg, overlap, secant):
            moments = server.new_round()
            for upload, p in zip(quadratic_uploads(server, optima, rate), weights, strict=True):
                moments.add(upload, p)
            server.apply(moments)
        assert_close(overlap.current, fedavg.current, rtol=0, atol=1e-5)
        assert_close(secant.current, fedavg.current, rtol=0, atol=1e-5)
        if secant.num_updates >= 3:   # two different starts to compare: the estimate is exact
            assert secant.last_comp_coef == pytest.approx(rate, abs=1e-4)


def test_buffers_are_averaged_plainly():
    """The trailing num_buffers entries (BatchNorm statistics) skip compensation and momentum."""
    server = ServerUpdate(t(0, 0, 0, 0), stale=True, momentum=0.9, server_lr=0.5, compensation="full",
                          num_buffers=2)
    for uploads in ([t(1, 1, 4, 8), t(3, 3, 0, 0)], [t(2, 2, 6, 2), t(0, 0, 2, 2)]):
        moments = server.new_round()
        for upload in uploads:
            moments.add(upload, 0.5)
        w = server.apply(moments)
        assert torch.equal(w[2:], (uploads[0][2:] + uploads[1][2:]) / 2)
    assert not torch.equal(w[:2], t(1, 1))   # the parameters took the Nesterov step


# ---- closed forms ---------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", COMPENSATIONS)
def test_no_staleness_gives_fedavg_average(mode):
    """mu 0, server_lr 1, prev == w: every compensation gives sum_k p_k L_k (to rounding, not bit-exact:
    w - (w - avg) rounds twice)."""
    weights = client_weights([60, 25, 15])
    server = ServerUpdate(initial_model(), stale=False, compensation=mode, lambd=0.04)
    for round_deltas in random_deltas(3, 3):
        start = server.current.clone()
        locals_ = [start + d for d in round_deltas]
        moments = server.new_round()
        for local, p in zip(locals_, weights, strict=True):
            moments.add(local, p)
        assert_close(server.apply(moments), weighted_average(locals_, weights), rtol=0, atol=ATOL)


@pytest.mark.parametrize("mode", SERVER_COMPENSATIONS)
def test_first_overlap_update_is_fedavg(mode):
    """Update 1 of Overlap has no staleness yet (prev == w == G_0)."""
    weights = client_weights([1, 3])
    server = ServerUpdate(initial_model(), stale=True, compensation=mode, lambd=0.04)
    locals_ = [server.upload_start + d for d in random_deltas(1, 2)[0]]
    moments = server.new_round()
    for local, p in zip(locals_, weights, strict=True):
        moments.add(local, p)
    assert_close(server.apply(moments), weighted_average(locals_, weights), rtol=0, atol=ATOL)


@pytest.mark.parametrize("mode", ["official", "dcasgd"])
def test_lambda_zero_is_no_compensation(mode):
    weights, deltas = client_weights([2, 3]), random_deltas(4, 2)
    compensated = ServerUpdate(initial_model(), stale=True, momentum=0.5, server_lr=0.7, compensation=mode)
    plain = ServerUpdate(initial_model(), stale=True, momentum=0.5, server_lr=0.7, compensation="none")
    expected = run_server(plain, deltas, weights)
    for a, b in zip(run_server(compensated, deltas, weights), expected, strict=True):
        assert torch.equal(a, b)


# ---- Nesterov -----------------------------------------------------------------------------------

def test_nesterov_reference_hand_computed():
    """mu 0.5, lr 0.5.
    Step 1, g = [2, -4]: buf = g; w = [1, 2] - 0.5 ([2, -4] + [1, -2]) = [-0.5, 5].
    Step 2, g = [1, 0]: buf = [1, -2] + [1, 0] = [2, -2];
            w = [-0.5, 5] - 0.5 ([1, 0] + [1, -1]) = [-1.5, 5.5].
    """
    w0, g1 = t(1, 2), t(2, -4)
    w1, buf1 = nesterov_reference(w0, g1, None, 0.5, 0.5)
    assert torch.equal(w1, t(-0.5, 5)) and torch.equal(buf1, t(2, -4))
    assert torch.equal(w0, t(1, 2)) and torch.equal(g1, t(2, -4))  # pure
    w2, buf2 = nesterov_reference(w1, t(1, 0), buf1, 0.5, 0.5)
    assert torch.equal(w2, t(-1.5, 5.5)) and torch.equal(buf2, t(2, -2))
    assert torch.equal(buf1, t(2, -4))


def test_nesterov_reference_matches_torch_sgd():
    gen = torch.Generator().manual_seed(3)
    w, buf = initial_model(), None
    ref = initial_model().requires_grad_()
    opt = torch.optim.SGD([ref], lr=0.3, momentum=0.9, nesterov=True)
    for _ in range(6):
        grad = torch.randn(DIM, generator=gen)
        w, buf = nesterov_reference(w, grad, buf, 0.9, 0.3)
        ref.grad = grad.clone()
        opt.step()
        assert_close(w, ref.detach(), rtol=0, atol=ATOL)


def test_server_update_matches_torch_nesterov():
    """FedAvg with server momentum: the server's step equals torch.optim.SGD(nesterov=True) driven with
    the pseudo-gradient w - avg."""
    weights = client_weights([40, 35, 25])
    server = ServerUpdate(initial_model(), stale=False, momentum=0.9, server_lr=0.3, compensation="dcasgd",
                          lambd=0.04)
    ref = initial_model().requires_grad_()
    opt = torch.optim.SGD([ref], lr=0.3, momentum=0.9, nesterov=True, foreach=False)
    for round_deltas in random_deltas(6, 3):
        locals_ = [server.current + d for d in round_deltas]
        moments = server.new_round()
        for local, p in zip(locals_, weights, strict=True):
            moments.add(local, p)
        ref.grad = ref.detach() - weighted_average(locals_, weights)
        opt.step()
        assert_close(server.apply(moments), ref.detach(), rtol=0, atol=ATOL)
    assert not torch.allclose(server.current, initial_model())


# ---- staleness and bookkeeping --------------------------------------------------------------------

def test_staleness_bookkeeping_follows_design_pseudo_code():
    """prev runs G_0, G_0, G_1, G_2; the global models equal a literal loop of the README's pseudo-code."""
    mu, lr, lambd = 0.5, 0.7, 2.0
    weights, deltas = client_weights([30, 50, 20]), random_deltas(4, 3, scale=0.3)
    g0 = initial_model()

    server = ServerUpdate(g0, stale=True, momentum=mu, server_lr=lr, compensation="dcasgd", lambd=lambd)
    starts, models = [], [g0]
    for round_deltas in deltas:
        starts.append(server.upload_start.clone())
        moments = server.new_round()
        for local_delta, p in zip(round_deltas, weights, strict=True):
            moments.add(server.upload_start + local_delta, p)
        models.append(server.apply(moments).clone())
    for start, expected in zip(starts, [models[0], models[0], models[1], models[2]], strict=True):
        assert torch.equal(start, expected)

    prev, w, momentum_buf = g0, g0, None
    for u, round_deltas in enumerate(deltas, start=1):
        locals_ = [prev + d for d in round_deltas]
        avg = weighted_average(locals_, weights)
        g = prev - avg
        v = direct_spread(prev, locals_, weights)
        g_c = g + lambd * v * (w - prev)
        prev = w
        w, momentum_buf = nesterov_reference(w, g_c, momentum_buf, mu, lr)
        assert_close(models[u], w, rtol=0, atol=ATOL)
    assert (models[4] - models[3]).abs().max() > 0.01  # the toy really moves


def test_fedavg_uploads_start_from_current():
    server = ServerUpdate(initial_model(), stale=False)
    for round_deltas in random_deltas(2, 1):
        assert server.upload_start is server.current
        moments = server.new_round()
        moments.add(server.current + round_deltas[0], 1.0)
        server.apply(moments)
    assert server.num_updates == 2


def test_apply_keeps_earlier_tensors_and_initial_intact():
    g0 = initial_model()
    server = ServerUpdate(g0, stale=True, momentum=0.9, server_lr=0.5)
    for round_deltas in random_deltas(3, 1):
        start = server.upload_start
        start_copy = start.clone()
        moments = server.new_round()
        moments.add(start + round_deltas[0], 1.0)
        server.apply(moments)
        assert torch.equal(start, start_copy)  # prev is replaced, never modified in place
    assert torch.equal(g0, initial_model())


def test_client_order_does_not_matter():
    weights, deltas = client_weights([10, 20, 30, 40]), random_deltas(4, 4)
    options = dict(stale=True, momentum=0.9, server_lr=0.3, compensation="dcasgd", lambd=5.0)
    forward = run_server(ServerUpdate(initial_model(), **options), deltas, weights)
    backward = run_server(ServerUpdate(initial_model(), **options), deltas, weights, order=[3, 1, 0, 2])
    for a, b in zip(forward, backward, strict=True):
        assert_close(a, b, rtol=0, atol=ATOL)


def test_zero_weight_client_changes_nothing():
    weights, deltas = client_weights([10, 0, 30]), random_deltas(3, 3)
    for round_deltas in deltas:
        round_deltas[1] = torch.full((DIM,), float("nan"))  # even garbage is ignored
    options = dict(stale=True, momentum=0.5, server_lr=0.7, compensation="dcasgd", lambd=1.0)
    with_idle = run_server(ServerUpdate(initial_model(), **options), deltas, weights)
    without = run_server(ServerUpdate(initial_model(), **options),
                         [[d[0], d[2]] for d in deltas], [weights[0], weights[2]])
    for a, b in zip(with_idle, without, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(weighted_average([t(1, 2), t(float("nan"), 0)], [1.0, 0.0]), t(1, 2))


def test_apply_rejects_moments_of_another_update():
    server = ServerUpdate(initial_model(), stale=True)
    moments_of_update_1 = server.new_round()
    moments_of_update_1.add(server.upload_start + 0.1, 1.0)
    server.apply(moments_of_update_1)
    with pytest.raises(ValueError, match="new_round"):
        server.apply(moments_of_update_1)  # used twice


# ---- the client merge -----------------------------------------------------------------------------

def test_merged_upload_and_start_hand_computed():
    """U = G + (L - x); x_next = G + b (U - G), exactly G at b = 0 and exactly U at b = 1."""
    latest, local, start = t(1, 2), t(4, 0), t(2, 2)
    upload = merged_upload(latest, local, start)
    assert torch.equal(upload, t(3, 0))
    assert torch.equal(merged_start(latest, upload, 1.0), upload)
    assert torch.equal(merged_start(latest, upload, 0.0), latest)
    assert torch.equal(merged_start(latest, upload, 0.5), t(2, 1))
    assert torch.equal(merged_start(latest, upload, 0.25), t(1.5, 1.5))
    with pytest.raises(ValueError, match="merge weight b must be between 0 and 1"):
        merged_start(latest, upload, 1.5)


def test_merging_uploads_are_not_stale():
    assert uploads_are_stale(True, "secant") and not uploads_are_stale(True, CLIENT_MERGE)
    assert not uploads_are_stale(False, "none")
    with pytest.raises(ValueError, match="the clients merge, so the uploads are not stale"):
        ServerUpdate(t(1.0), stale=True, compensation=CLIENT_MERGE)


def merge_pipeline(initial, optima, weights, contraction, rounds: int, merge_weight: float) -> list[torch.Tensor]:
    """The Overlap pipeline with the client merge on a quadratic (Characters/client.py's order): client k's
    round trains its own start x_k into x_k - A_k (x_k - opt_k), uploads U_k = G_r + (L_k - x_k) and starts
    its next round from G_r + b (U_k - G_r); the server averages like FedAvg. `contraction` is A, shared, or
    a list of each client's A_k. Returns G_1..G_rounds."""
    server = ServerUpdate(initial, stale=False, compensation=CLIENT_MERGE)
    starts, models = [initial] * len(optima), []
    contractions = contraction if isinstance(contraction, list) else [contraction] * len(optima)
    for _ in range(rounds):
        latest = server.current.clone()   # G_r, what every client holds when it uploads this round
        uploads = [merged_upload(latest, start - a_k * (start - optimum), start)
                   for start, optimum, a_k in zip(starts, optima, contractions, strict=True)]
        starts = [merged_start(latest, upload, merge_weight) for upload in uploads]
        moments = server.new_round()
        for upload, p in zip(uploads, weights, strict=True):
            moments.add(upload, p)
        models.append(server.apply(moments).clone())
    return models


def quadratic_case(dim: int = 16):
    """Three non-IID clients (their own optima) sharing one Hessian H: K local SGD steps at lr eta go the
    fraction A = 1 - (1 - eta H)^K of the way, the same for every client, coordinate by coordinate."""
    generator = torch.Generator().manual_seed(7)
    optima = [torch.randn(dim, generator=generator, dtype=torch.float64) for _ in range(3)]
    contraction = 1 - (1 - 0.1 * torch.linspace(0.5, 5.0, dim, dtype=torch.float64)) ** 5
    initial = torch.randn(dim, generator=generator, dtype=torch.float64)
    return initial, optima, client_weights([20, 50, 30]), contraction


def test_the_full_merge_on_a_shared_hessian_is_fedavg_exactly():
    """b = 1: the clients' mean start is the current global model, and on a quadratic whose clients share H
    the average step from their starts is FedAvg's step from that model, so the pipeline is FedAvg, with no
    staleness left at all; without the merge (b = 0) it is the one-version-stale `none` form, far off."""
    initial, optima, weights, contraction = quadratic_case()
    fedavg, model = [], initial
    for _ in range(8):
        model = sum(p * (model - contraction * (model - opt)) for opt, p in zip(optima, weights, strict=True))
        fedavg.append(model)
    merged = merge_pipeline(initial, optima, weights, contraction, 8, merge_weight=1.0)
    unmerged = merge_pipeline(initial, optima, weights, contraction, 8, merge_weight=0.0)
    for ours, theirs in zip(merged, fedavg, strict=True):
        assert_close(ours, theirs, rtol=0, atol=1e-12)
    assert (unmerged[-1] - fedavg[-1]).abs().max() > 1e-3


@pytest.mark.parametrize("merge_weight", [0.0, 0.3, 0.7, 1.0])
def test_the_merge_weight_sets_the_staleness_of_the_mean_start(merge_weight):
    """With e_r = G_r - opt (opt = sum p_k opt_k) the pipeline follows e_{r+1} = e_r - A ((1 - b) e_{r-1} + b e_r):
    the clients' mean start lags the current model by (1 - b) of one version. b = 1 gives FedAvg's
    e_{r+1} = (1 - A) e_r; b = 0 the `none` form's e_{r+1} = e_r - A e_{r-1}, which oscillates when A is near 1."""
    initial, optima, weights, contraction = quadratic_case()
    optimum = sum(p * opt for opt, p in zip(optima, weights, strict=True))
    errors = [initial - optimum, initial - optimum]   # e_{-1} = e_0: round 0 starts from G_0
    for _ in range(8):
        errors.append(errors[-1] - contraction * ((1 - merge_weight) * errors[-2] + merge_weight * errors[-1]))
    pipeline = merge_pipeline(initial, optima, weights, contraction, 8, merge_weight)
    for model, error in zip(pipeline, errors[2:], strict=True):
        assert_close(model - optimum, error, rtol=0, atol=1e-12)
    if merge_weight == 0.0:   # the server-side `none` form computes the same sequence
        server, models = ServerUpdate(initial, stale=True, compensation="none"), []
        for _ in range(8):
            start = server.upload_start
            moments = server.new_round()
            for opt, p in zip(optima, weights, strict=True):
                moments.add(start - contraction * (start - opt), p)
            models.append(server.apply(moments).clone())
        for ours, theirs in zip(pipeline, models, strict=True):
            assert_close(ours, theirs, rtol=0, atol=1e-12)


def test_the_merge_trails_fedavg_where_one_client_alone_learns():
    """The merge's limit (docs/defaults.md, non-IID text): in a direction only one client's loss curves (a
    word only its slice holds), FedAvg moves G by p A e a round from G itself; the merging client starts
    from G plus its own last progress, already part of the way, so its round goes less far and G follows
    more slowly. After 6 rounds with p = 1/4, A = 1/2 the error is 0.558 of the start against FedAvg's
    0.449; b = 1/2 gives 0.491. With a shared Hessian the same pipeline is FedAvg exactly (above)."""
    initial, optima = torch.ones(1, dtype=torch.float64), [torch.zeros(1, dtype=torch.float64)] * 4
    alone = [torch.full((1,), 0.5, dtype=torch.float64)] + [torch.zeros(1, dtype=torch.float64)] * 3
    weights = client_weights([1, 1, 1, 1])
    fedavg = [(1 - 0.5 / 4) ** r for r in range(1, 7)]
    merged = [float(g) for g in merge_pipeline(initial, optima, weights, alone, 6, merge_weight=1.0)]
    half = [float(g) for g in merge_pipeline(initial, optima, weights, alone, 6, merge_weight=0.5)]
    assert merged[0] == pytest.approx(fedavg[0]) and half[0] == pytest.approx(fedavg[0])   # round 1: no merge yet
    assert all(m > h > f for m, h, f in zip(merged[1:], half[1:], fedavg[1:], strict=True))
    assert (round(merged[-1], 3), round(half[-1], 3), round(fedavg[-1], 3)) == (0.558, 0.491, 0.449)


# ---- user errors ----------------------------------------------------------------------------------

def test_unknown_compensation_names_the_options():
    pattern = r"'dc'.*official, dcasgd, full, none, constant, secant"
    with pytest.raises(ValueError, match=pattern):
        compensation_coefficient("dc", t(1.0), 0.1)
    with pytest.raises(ValueError, match=pattern):
        ServerUpdate(t(1.0), stale=True, compensation="dc")


@pytest.mark.parametrize("kwargs, match", [
    (dict(lambd=-0.1), "lambda"),
    (dict(momentum=-0.9), "momentum"),
    (dict(server_lr=-1.0), "learning rate"),
    (dict(comp_coef=1.5), "between 0 and 1"),
    (dict(num_buffers=1), "num_buffers"),
])
def test_bad_server_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ServerUpdate(t(1.0), stale=True, **kwargs)
