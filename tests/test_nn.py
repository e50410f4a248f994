"""Networks in petsynth.nn: shapes, the VQ codebook, the map encoder, receptive fields, presets."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.nn.functional as F

from petsynth.config import ConfigError
from petsynth.nn import (
    AUTOENCODER_PRESETS,
    DENOISER_PRESETS,
    DenoiserConfig,
    DiscriminatorConfig,
    MapEncoder,
    SegmenterConfig,
    VQAutoencoderConfig,
    attention_map,
    binarize,
    build_autoencoder,
    build_denoiser,
    build_discriminator,
    build_segmenter,
    count_parameters,
    probability,
    receptive_field,
)


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    # one thread: tiny tensors gain nothing from two, and a busy second core makes OpenMP wait (50x slower)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def tiny_ae(**kw) -> VQAutoencoderConfig:
    base = dict(base_channels=8, norm_num_groups=4, codebook_size=16)
    return VQAutoencoderConfig(**{**base, **kw})


# --- map encoder -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("f", [1, 2, 4, 8])
def test_map_encoder_shapes(f):
    enc = MapEncoder(num_maps=2, f=f, out_channels=3)
    maps = torch.rand(2, 2, 32, 32)
    out = enc(maps)
    assert out.shape == (2, 6, 32 // f, 32 // f)
    as_list = enc([maps[:, :1], maps[:, 1:]])
    torch.testing.assert_close(as_list, out)


def test_map_encoder_downsampling_is_bilinear_half_steps():
    enc = MapEncoder(num_maps=2, f=4)
    const = torch.full((1, 2, 32, 32), 0.37)
    torch.testing.assert_close(enc.downsample(const), torch.full((1, 2, 8, 8), 0.37))
    # a 0.5x bilinear resize of an even-sized map is 2x2 average pooling
    x = torch.rand(1, 2, 32, 32)
    torch.testing.assert_close(enc.downsample(x), F.avg_pool2d(F.avg_pool2d(x, 2), 2))
    assert MapEncoder(f=1).downsample(x) is x


def test_map_encoder_conv_is_per_map_per_pixel_linear():
    enc = MapEncoder(num_maps=2, f=2, out_channels=3)
    assert enc.proj.bias is None  # as the public SpatialRescaler
    w = torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.25, -1.0]])  # (map, out channel)
    with torch.no_grad():
        enc.proj.weight.copy_(w.reshape(6, 1, 1, 1))
    maps = torch.rand(2, 2, 16, 16)
    down = enc.downsample(maps)
    expected = torch.cat([down[:, m : m + 1] * w[m].view(1, 3, 1, 1) for m in range(2)], dim=1)
    torch.testing.assert_close(enc(maps), expected)


def test_map_encoder_rejects_bad_input():
    enc = MapEncoder(num_maps=2, f=4)
    with pytest.raises(ValueError):
        enc(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError):
        enc(torch.rand(1, 2, 30, 30))
    with pytest.raises(ValueError):
        MapEncoder(f=3)


# --- VQ autoencoder ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("f", [1, 2, 4, 8])
def test_autoencoder_shapes(f):
    ae = build_autoencoder(tiny_ae(downsample_factor=f))
    assert ae.f == f
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    z = ae.encode(x)
    assert z.shape == (2, 3, 32 // f, 32 // f)
    zq, loss, idx = ae.quantize(z)
    assert zq.shape == z.shape and idx.shape == (2, 32 // f, 32 // f)
    assert ae.decode(zq).shape == x.shape
    rec, loss = ae(x)
    assert rec.shape == x.shape and loss.ndim == 0 and torch.isfinite(loss)


def test_autoencoder_default_and_presets():
    cfg = VQAutoencoderConfig()
    assert (cfg.downsample_factor, cfg.latent_channels, cfg.channels) == (4, 3, (32, 64, 128))
    public = AUTOENCODER_PRESETS["cpdm-public"]
    assert (public.channels, public.codebook_size, public.num_res_blocks) == ((128, 256, 512), 8192, 2)
    with torch.device("meta"):
        n = count_parameters(build_autoencoder("cpdm-public"))
    print(f"VQ autoencoder cpdm-public: {n / 1e6:.2f} M parameters")
    assert 20e6 < n < 100e6
    assert VQAutoencoderConfig.preset("small", codebook_size=64).codebook_size == 64


def test_a_plain_autoencoder_never_quantises():
    """quantize: false: training, the latent and decoding all use the continuous z; the codebook is untouched."""
    ae = build_autoencoder(tiny_ae(quantize=False)).train()
    codebook = ae.codebook.detach().clone()
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    rec, loss = ae(x)
    assert float(loss) == 0.0
    torch.testing.assert_close(rec, ae.decode(ae.encode(x)))
    torch.testing.assert_close(ae.from_latent(ae.to_latent(x)), rec)
    torch.testing.assert_close(ae.codebook, codebook)          # no EMA update in train mode
    quantised = build_autoencoder(tiny_ae()).train()
    quantised.load_state_dict(ae.state_dict())
    assert not torch.allclose(quantised(x)[0], rec)           # the VQ path differs: the test can fail


def test_autoencoder_config_validation():
    with pytest.raises(ConfigError):
        VQAutoencoderConfig.from_dict({"downsample_factor": 3})
    with pytest.raises(ConfigError):
        VQAutoencoderConfig.from_dict({"downsample_factor": 8, "channel_multipliers": [1, 2, 4]})
    with pytest.raises(ConfigError):
        VQAutoencoderConfig.from_dict({"base_channels": 20, "norm_num_groups": 16})
    with pytest.raises(ConfigError):
        VQAutoencoderConfig.from_dict({"latent_before_quant_conv": True, "quantize_latent": True})
    with pytest.raises(ConfigError):
        VQAutoencoderConfig.from_dict({"quantize": False, "quantize_latent": True})
    cfg = tiny_ae(downsample_factor=8)
    assert cfg.channels == (8, 16, 32, 32)
    assert VQAutoencoderConfig.from_dict(cfg.to_dict()) == cfg


def test_quantized_latent_is_made_of_codebook_rows():
    ae = build_autoencoder(tiny_ae()).eval()
    z = ae.encode(torch.rand(2, 1, 32, 32) * 2 - 1)
    zq, _, idx = ae.quantize(z)
    rows = zq.permute(0, 2, 3, 1).reshape(-1, 3)
    torch.testing.assert_close(rows, ae.codebook[idx.reshape(-1)], atol=1e-6, rtol=0)
    # each row is the nearest code vector to z at that pixel
    dist = torch.cdist(z.permute(0, 2, 3, 1).reshape(-1, 3), ae.codebook)
    assert torch.equal(dist.argmin(dim=1), idx.reshape(-1))
    torch.testing.assert_close(ae.embed(idx), zq, atol=1e-6, rtol=0)


def test_codebook_updates_in_train_mode_only():
    ae = build_autoencoder(tiny_ae())
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    state = {k: v.clone() for k, v in ae.quantizer.state_dict().items()}
    ae.eval()
    with torch.no_grad():
        ae(x)
        ae.from_latent(ae.to_latent(x))
    for k, v in ae.quantizer.state_dict().items():
        assert torch.equal(v, state[k]), k
    ae.train()
    ae(x)
    assert not torch.equal(ae.codebook, state["embedding.weight"])


def test_gradients_pass_the_quantizer_straight_through():
    ae = build_autoencoder(tiny_ae())
    rec, loss = ae(torch.rand(2, 1, 32, 32))
    (rec.square().mean() + loss).backward()
    assert ae.encoder.blocks[0].conv.weight.grad is not None
    assert ae.encoder.blocks[0].conv.weight.grad.abs().sum() > 0
    assert ae.codebook.grad is None


def test_quantizer_runs_in_float32_under_autocast():
    ae = build_autoencoder(tiny_ae()).eval()
    z = ae.encode(torch.rand(1, 1, 32, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        zq, loss, idx = ae.quantize(z.bfloat16())
    assert zq.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.equal(idx, ae.quantize(z)[2])


def test_latent_flags():
    x = torch.rand(1, 1, 32, 32) * 2 - 1
    ae = build_autoencoder(tiny_ae()).eval()
    with torch.no_grad():
        z = ae.to_latent(x)  # default: continuous, after quant_conv
        torch.testing.assert_close(z, ae.encode(x))
        zq = ae.quantize(z)[0]
        assert not torch.allclose(z, zq)
        torch.testing.assert_close(ae.from_latent(z), ae.decode(zq))

        ae.cfg = ae.cfg.model_copy(update={"quantize_latent": True})
        torch.testing.assert_close(ae.to_latent(x), zq)

        ae.cfg = ae.cfg.model_copy(update={"quantize_latent": False, "latent_before_quant_conv": True})
        h = ae.to_latent(x)
        torch.testing.assert_close(h, ae.encoder(x))
        torch.testing.assert_close(ae.from_latent(h), ae.decode(zq))

        ae.cfg = ae.cfg.model_copy(update={"latent_before_quant_conv": False, "quantize_on_decode": False})
        torch.testing.assert_close(ae.from_latent(z), ae.decode(z))
    with pytest.raises(ValueError):
        ae.encode(torch.rand(1, 1, 30, 30))


# --- discriminator -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("in_channels", [1, 2])
def test_discriminator_shapes(in_channels):
    d = build_discriminator(DiscriminatorConfig(in_channels=in_channels, channels=8))
    out = d(torch.rand(2, in_channels, 64, 64))
    assert out.shape == (2, 1, 6, 6)
    feats = d.features(torch.rand(2, in_channels, 64, 64))
    assert len(feats) == 5 and feats[-1].shape == out.shape


def test_discriminator_receptive_field_is_70():
    assert receptive_field(3, 4) == 70
    d = build_discriminator(DiscriminatorConfig(channels=4)).eval()
    assert d.receptive_field == 70
    x = torch.rand(1, 1, 128, 128, requires_grad=True)
    out = d(x)
    assert out.shape == (1, 1, 14, 14)
    out[0, 0, 7, 7].backward()
    support = x.grad[0, 0] != 0
    rows, cols = support.any(dim=1).nonzero(), support.any(dim=0).nonzero()
    assert rows.max() - rows.min() + 1 == 70 and cols.max() - cols.min() + 1 == 70
    assert support.sum() == 70 * 70
    # a pixel just outside the field does not change that logit
    r0, c0 = int(rows.min()), int(cols.min())
    with torch.no_grad():
        y = x.detach().clone()
        y[0, 0, r0 - 1, c0 + 5] += 10.0
        assert d(y)[0, 0, 7, 7] == out[0, 0, 7, 7]
        y[0, 0, r0, c0 + 5] += 10.0
        assert d(y)[0, 0, 7, 7] != out[0, 0, 7, 7]


# --- segmenter ---------------------------------------------------------------------------------------------


def test_segmenter_builds_without_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("network access while building the segmenter")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    for backbone in ("resnet10", "resnet18"):
        net = build_segmenter(SegmenterConfig(backbone=backbone))
        assert count_parameters(net) > 1e6


def test_segmenter_shapes_and_binarize():
    net = build_segmenter(SegmenterConfig(decoder_channels=(32, 16, 16, 8, 8))).eval()
    ct = torch.rand(2, 1, 64, 64) * 2 - 1
    logits = net(ct)
    assert logits.shape == (2, 1, 64, 64)
    p = probability(logits)
    assert p.min() >= 0 and p.max() <= 1
    m = attention_map(net, ct)
    assert m.shape == ct.shape and set(m.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(m, binarize(p))
    prob = torch.tensor([0.0, 0.49, 0.5, 0.51, 1.0])
    assert binarize(prob).tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
    assert binarize(prob, threshold=0.2).tolist() == [0.0, 1.0, 1.0, 1.0, 1.0]


# --- denoiser ----------------------------------------------------------------------------------------------


def test_denoiser_forward_shapes():
    cfg = DenoiserConfig(in_channels=9, out_channels=3, channels=(8, 16), attention_levels=(False, True),
                         num_head_channels=8, norm_num_groups=4)
    net = build_denoiser(cfg)
    x = torch.randn(2, 9, 16, 16)
    assert net(x, torch.tensor([0, 999])).shape == (2, 3, 16, 16)
    assert net(x, torch.tensor([0.5, 10.0])).shape == (2, 3, 16, 16)


def test_denoiser_small_preset_forward():
    net = build_denoiser("small").eval()
    assert DenoiserConfig() == DENOISER_PRESETS["small"]
    with torch.no_grad():
        out = net(torch.randn(1, 9, 64, 64), torch.tensor([500]))
    assert out.shape == (1, 3, 64, 64)
    n = count_parameters(net)
    print(f"denoiser small: {n / 1e6:.2f} M parameters")
    assert 1e6 < n < 10e6


def test_denoiser_tiny_preset_builds():
    net = build_denoiser("tiny")
    assert net(torch.randn(1, 9, 16, 16), torch.tensor([1])).shape == (1, 3, 16, 16)
    assert count_parameters(net) < count_parameters(build_denoiser("small"))


def test_denoiser_cpdm_public_preset():
    cfg = DenoiserConfig.preset("cpdm-public")
    assert (cfg.in_channels, cfg.out_channels, cfg.channels) == (9, 3, (128, 256, 384, 512))
    assert cfg.num_res_blocks == 2 and cfg.attention_levels == (False, False, False, True)
    with torch.device("meta"):
        net = build_denoiser(cfg)
    n = count_parameters(net)
    print(f"denoiser cpdm-public: {n / 1e6:.2f} M parameters")
    assert 80e6 < n < 110e6


def test_denoiser_config_checks():
    assert DenoiserConfig.preset("cpdm-public", in_channels=3).in_channels == 3
    with pytest.raises(ValueError):
        DenoiserConfig.preset("nope")
    with pytest.raises(ConfigError):
        DenoiserConfig.from_dict({"channels": [32, 64], "attention_levels": [False, False, True]})
    with pytest.raises(ConfigError):
        DenoiserConfig.from_dict({"channels": [24, 48, 96, 128], "norm_num_groups": 16})


def test_denoiser_cross_attention_context():
    """Cross-attention: the output depends on each sample's own context, and attention is an average over
    the context tokens (softmax over keys): L copies of one token act as that one token."""
    cfg = DenoiserConfig(in_channels=2, out_channels=1, channels=(8, 16), attention_levels=(False, True),
                         num_head_channels=8, norm_num_groups=4, with_conditioning=True, cross_attention_dim=6)
    torch.manual_seed(0)
    net = build_denoiser(cfg).eval()
    with torch.no_grad():  # MONAI starts output projections at zero (the context has no effect yet): untrain it
        for p in net.parameters():
            if not p.any():
                p.normal_(0, 0.1)
    x, t = torch.randn(2, 2, 16, 16), torch.tensor([3, 700])
    ctx = torch.randn(2, 5, 6)
    with torch.no_grad():
        out = net(x, t, context=ctx)
        assert out.shape == (2, 1, 16, 16)
        other = ctx.clone()
        other[1] = torch.randn(5, 6)
        changed = net(x, t, context=other)
        torch.testing.assert_close(changed[0], out[0])  # sample 0's context is the same
        assert not torch.allclose(changed[1], out[1], atol=1e-4)
        one = ctx[:, :1]
        torch.testing.assert_close(net(x, t, context=one.expand(2, 7, 6)), net(x, t, context=one), rtol=1e-4,
                                   atol=1e-5)
    with pytest.raises(ConfigError, match="together"):
        DenoiserConfig.from_dict({"with_conditioning": True})
