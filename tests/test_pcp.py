"""PCP replacement: exactness at full rank, argument checks, persistence, directions and scales."""

from __future__ import annotations

import pytest
import torch

from backdoor_lens.hooks import PCPReplace, apply
from backdoor_lens.hooks.pcp import PCPBasis
from backdoor_lens.lm.collect import collect_activations, load_means, module_io


def logits_of(model, tokens):
    with torch.no_grad():
        return model(tokens, return_type="logits")


def flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


def symmetric(eigvals: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    return basis @ torch.diag(eigvals) @ basis.T


@pytest.fixture
def mlp_io(model, make_tokens):
    """Inputs and outputs of the real blocks.0.mlp on random tokens, flattened to [sample, d_model]."""
    h, y = module_io(model, make_tokens(16, seed=5), "blocks.0.mlp")
    return flat(h), flat(y)


# ---- Exactness at full rank ----------------------------------------------------------------------
def test_centred_full_rank_reproduces_symmetric_affine_map():
    d, n = 8, 400
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x = x - x.mean(0)
    # Whitened inputs (identity covariance) with an offset: the output PCA basis is then W's eigenbasis.
    evals, evecs = torch.linalg.eigh(x.T @ x / (n - 1))
    in_offset = torch.randn(d, generator=g, dtype=torch.float64)
    h = x @ evecs @ torch.diag(evals.rsqrt()) @ evecs.T + in_offset
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    lam = torch.linspace(0.5, 3.0, d, dtype=torch.float64) * torch.tensor([1.0, -1.0] * (d // 2), dtype=torch.float64)
    w = symmetric(lam, q)
    b = torch.randn(d, generator=g, dtype=torch.float64)
    h, y = h.float(), (h @ w + b).float()

    basis = PCPBasis.fit("blocks.0.mlp", h, y, n_components=d)
    scales = basis.least_squares_scales(h, y, rank=d, variant="centred")
    # The scales are W's eigenvalues (in order of decreasing |eigenvalue|, the output variance).
    torch.testing.assert_close(scales.double(), lam[lam.abs().argsort(descending=True)], atol=1e-4, rtol=0)
    replacement = basis.replacement(scales, "centred")
    torch.testing.assert_close(replacement.matrix().double(), w, atol=1e-4, rtol=0)
    torch.testing.assert_close(replacement.in_mean, h.mean(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(replacement.out_mean, y.mean(0), atol=1e-5, rtol=0)

    fresh = torch.randn(20, d, generator=g)
    predicted = replacement.out_mean + (fresh - replacement.in_mean) @ replacement.matrix()
    torch.testing.assert_close(predicted, fresh @ w.float() + b.float(), atol=1e-4, rtol=0)


def _affine_mlp_hooks(model, w: torch.Tensor, b: torch.Tensor):
    """Hooks making blocks.0's MLP output the symmetric affine map w, b of its input (ln2's output)."""
    captured: dict[str, torch.Tensor] = {}

    def capture(resid, hook):
        captured["resid"] = resid

    def replace(out, hook):
        return model.blocks[0].ln2(captured.pop("resid")) @ w + b

    return [("blocks.0.hook_resid_mid", capture), ("blocks.0.hook_mlp_out", replace)]


def test_centred_full_rank_pcp_replace_matches_affine_module_end_to_end(model, make_tokens):
    d = model.cfg.d_model
    fit_tokens, test_tokens = make_tokens(64, seed=3), make_tokens(8, seed=4)
    h0, _ = module_io(model, fit_tokens, "blocks.0.mlp")
    h0 = flat(h0).double()
    # W shares its eigenbasis with the input covariance (layer norm makes one direction null),
    # with distinct output variances c_k^2, so output PCA recovers W's eigenbasis exactly.
    var, q = torch.linalg.eigh(torch.cov(h0.T))
    assert var[0] < 1e-6 < var[1]
    c = torch.linspace(0.6, 2.0, d - 1, dtype=torch.float64)
    lam = torch.cat([torch.ones(1, dtype=torch.float64), c / var[1:].sqrt()])
    w = symmetric(lam, q).float()
    b = torch.randn(d, generator=torch.Generator().manual_seed(7))

    with model.hooks(fwd_hooks=_affine_mlp_hooks(model, w, b)):
        h, y = module_io(model, fit_tokens, "blocks.0.mlp")
        hooked = logits_of(model, test_tokens)
    h, y = flat(h), flat(y)
    torch.testing.assert_close(y, h @ w + b, atol=1e-5, rtol=0)  # the hooks did what they say
    unhooked = logits_of(model, test_tokens)
    assert (hooked - unhooked).abs().max() > 1e-2  # non-trivial: the affine map is not the MLP

    basis = PCPBasis.fit("blocks.0.mlp", h, y, n_components=d)
    replacement = basis.replacement(basis.least_squares_scales(h, y, rank=d, variant="centred"), "centred")
    with apply(model, replacement):
        replaced = logits_of(model, test_tokens)
    torch.testing.assert_close(replaced, hooked, atol=1e-4, rtol=0)
    torch.testing.assert_close(logits_of(model, test_tokens), unhooked, atol=0, rtol=0)


@pytest.mark.parametrize("module", ["blocks.0.mlp", "blocks.1.attn"])
@pytest.mark.parametrize("variant", ["faithful", "centred"])
def test_pcp_replace_hook_computes_its_formula(model, tokens, module, variant):
    h, y = module_io(model, tokens, module)
    basis = PCPBasis.fit(module, flat(h), flat(y), n_components=5)
    replacement = basis.replacement(torch.tensor([1.5, -0.7, 0.3]), variant)
    assert replacement.directions.shape == (3, model.cfg.d_model)
    out_hook = {"blocks.0.mlp": "blocks.0.hook_mlp_out", "blocks.1.attn": "blocks.1.hook_attn_out"}[module]
    with apply(model, replacement):
        got = collect_activations(model, tokens, [out_hook])[out_hook]
    if variant == "centred":
        expected = replacement.out_mean + (h - replacement.in_mean) @ replacement.matrix()
    else:
        assert replacement.in_mean is None and replacement.out_mean is None
        expected = h @ replacement.matrix()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


# ---- Argument checks -----------------------------------------------------------------------------
def test_rank_above_d_model_raises(mlp_io):
    h, y = mlp_io
    d = h.shape[1]
    basis = PCPBasis.fit("blocks.0.mlp", h, y, n_components=d)
    for call in (
        lambda: basis.directions(d + 1, "centred"),
        lambda: basis.least_squares_scales(h, y, rank=d + 1),
        lambda: basis.replacement(torch.ones(d + 1)),
    ):
        with pytest.raises(ValueError) as info:
            call()
        assert "rank" in str(info.value) and "d_model" in str(info.value)


def test_rank_above_n_components_raises(mlp_io):
    h, y = mlp_io
    basis = PCPBasis.fit("blocks.0.mlp", h, y, n_components=3)
    assert basis.n_components == 3
    with pytest.raises(ValueError, match="rank"):
        basis.directions(4)
    with pytest.raises(ValueError, match="rank"):
        basis.least_squares_scales(h, y, rank=4, variant="centred")
    with pytest.raises(ValueError, match="rank"):
        basis.directions(0)


def test_unknown_variant_raises(mlp_io):
    h, y = mlp_io
    basis = PCPBasis.fit("blocks.0.mlp", h, y, n_components=3)
    for call in (
        lambda: basis.directions(2, "centered"),
        lambda: basis.replacement([1.0, 1.0], "bogus"),
        lambda: basis.least_squares_scales(h, y, 2, "bogus"),
    ):
        with pytest.raises(ValueError, match="variant"):
            call()


def test_fit_argument_checks(mlp_io):
    h, y = mlp_io
    with pytest.raises(ValueError, match="n_components"):
        PCPBasis.fit("blocks.0.mlp", h, y, n_components=h.shape[1] + 1)
    with pytest.raises(ValueError, match="inputs and outputs"):
        PCPBasis.fit("blocks.0.mlp", h[:-1], y)
    bad = y.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="outputs"):
        PCPBasis.fit("blocks.0.mlp", h, bad)


def test_pcp_replace_argument_checks(model, tokens):
    with pytest.raises(ValueError, match="directions"):
        PCPReplace("blocks.0.mlp", torch.ones(2, 16), torch.ones(3))
    with pytest.raises(ValueError, match="directions"):
        with apply(model, PCPReplace("blocks.0.mlp", torch.ones(2, 5), torch.ones(2))):
            model(tokens)
    with pytest.raises(ValueError, match="embed"):
        with apply(model, PCPReplace("embed", torch.ones(2, 16), torch.ones(2))):
            model(tokens)
    assert all(len(hp.fwd_hooks) == 0 for hp in model.hook_dict.values())


# ---- Persistence ---------------------------------------------------------------------------------
def test_basis_save_load_roundtrip(mlp_io, tmp_path):
    h, y = mlp_io
    basis = PCPBasis.fit("blocks.0.mlp", h, y, n_components=6)
    path = tmp_path / "basis.safetensors"
    basis.save(path)
    loaded = PCPBasis.load(path)
    assert loaded.module == "blocks.0.mlp"
    for name in ("components", "explained_variance", "out_mean", "in_mean", "reference_coeffs"):
        assert torch.equal(getattr(loaded, name), getattr(basis, name)), name
    for variant in ("faithful", "centred"):
        assert torch.equal(loaded.directions(4, variant), basis.directions(4, variant))


@pytest.mark.parametrize("variant", ["faithful", "centred"])
def test_replace_save_load_roundtrip_gives_identical_logits(model, tokens, mlp_io, tmp_path, variant):
    h, y = mlp_io
    basis = PCPBasis.fit("blocks.0.mlp", h, y, n_components=6)
    replacement = basis.replacement(basis.least_squares_scales(h, y, 4, variant), variant)
    path = tmp_path / f"{variant}.safetensors"
    replacement.save(path)
    loaded = PCPReplace.load(path)
    assert loaded.module == replacement.module
    for name in ("directions", "scales", "in_mean", "out_mean"):
        a, b = getattr(loaded, name), getattr(replacement, name)
        assert (a is None and b is None) or torch.equal(a, b), name
    with apply(model, replacement):
        expected = logits_of(model, tokens)
    with apply(model, loaded):
        got = logits_of(model, tokens)
    assert torch.equal(got, expected)
    assert (expected - logits_of(model, tokens)).abs().max() > 1e-4  # the replacement does something


def test_loading_wrong_kind_raises(mlp_io, tmp_path):
    h, y = mlp_io
    basis = PCPBasis.fit("blocks.0.mlp", h, y, n_components=3)
    basis_path, replace_path = tmp_path / "basis.safetensors", tmp_path / "replace.safetensors"
    basis.save(basis_path)
    basis.replacement([1.0, 2.0]).save(replace_path)
    with pytest.raises(ValueError, match="pcp_basis"):
        PCPBasis.load(replace_path)
    with pytest.raises(ValueError, match="pcp_replace"):
        PCPReplace.load(basis_path)
    with pytest.raises(ValueError, match="module_means"):
        load_means(basis_path)


# ---- Directions and scales -----------------------------------------------------------------------
def test_directions_are_unit_norm(mlp_io):
    h, y = mlp_io
    basis = PCPBasis.fit("blocks.0.mlp", h, y, n_components=8)
    faithful = basis.directions(8, "faithful")
    torch.testing.assert_close(faithful.norm(dim=1), torch.ones(8), atol=1e-5, rtol=0)
    centred = basis.directions(8, "centred")
    torch.testing.assert_close(centred @ centred.T, torch.eye(8), atol=1e-5, rtol=0)
    # The faithful directions fold the output mean in, so they differ from the plain components.
    assert (faithful - centred).abs().max() > 1e-3
    # Explained variance is sorted, largest first.
    assert torch.all(basis.explained_variance[:-1] >= basis.explained_variance[1:])


def _squared_error(replacement: PCPReplace, h: torch.Tensor, y: torch.Tensor) -> float:
    x = h - replacement.in_mean if replacement.in_mean is not None else h
    pred = x @ replacement.matrix()
    if replacement.out_mean is not None:
        pred = pred + replacement.out_mean
    return float(((pred - y) ** 2).sum())


@pytest.mark.parametrize("variant", ["faithful", "centred"])
def test_rank_one_least_squares_beats_zero_scales(mlp_io, variant):
    h, y = mlp_io
    basis = PCPBasis.fit("blocks.0.mlp", h, y, n_components=4)
    scales = basis.least_squares_scales(h, y, rank=1, variant=variant)
    assert scales.shape == (1,) and torch.isfinite(scales).all()
    fitted = _squared_error(basis.replacement(scales, variant), h, y)
    zero = _squared_error(basis.replacement(torch.zeros(1), variant), h, y)
    assert fitted < zero
    # Least squares: nudging the scale either way does not help.
    for delta in (-0.05, 0.05):
        assert fitted <= _squared_error(basis.replacement(scales + delta, variant), h, y) + 1e-6


def test_component_signs_are_deterministic(mlp_io):
    h, y = mlp_io
    basis = PCPBasis.fit("blocks.0.mlp", h, y, n_components=6)
    largest = basis.components.gather(1, basis.components.abs().argmax(1, keepdim=True))
    assert torch.all(largest > 0)
    # Flipping the data's sign flips the components' raw SVD signs, but not the fitted ones' rule.
    flipped = PCPBasis.fit("blocks.0.mlp", h, -y, n_components=6)
    torch.testing.assert_close(flipped.components, basis.components, atol=1e-5, rtol=0)


def test_reference_sets_faithful_coefficients(mlp_io):
    h, y = mlp_io
    reference = y[0]
    basis = PCPBasis.fit("blocks.0.mlp", h, y, n_components=4, reference=reference)
    expected = basis.components @ (reference - basis.out_mean)
    torch.testing.assert_close(basis.reference_coeffs, expected, atol=1e-5, rtol=1e-5)
    v = basis.out_mean + expected[:, None] * basis.components
    torch.testing.assert_close(basis.directions(4, "faithful"), v / v.norm(dim=1, keepdim=True), atol=1e-5, rtol=1e-5)
    default = PCPBasis.fit("blocks.0.mlp", h, y, n_components=4)
    torch.testing.assert_close(default.reference_coeffs, default.explained_variance.sqrt())
    with pytest.raises(ValueError, match="reference"):
        PCPBasis.fit("blocks.0.mlp", h, y, n_components=4, reference=torch.zeros(5))
