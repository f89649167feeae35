import pytest
import torch

import scoresde
from scoresde.model import ScoreModel
from scoresde.nets import MLP, UNet, build_net, net_config


def _randomise(net, gen, scale=0.2):
    # The output layers start at zero; give every weight a value so the tests see the whole network.
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return net


@pytest.mark.parametrize("shape", [(5, 2), (3, 1, 2, 2)])
def test_mlp_shape_and_labels(shape, gen):
    net = _randomise(MLP(4 if len(shape) == 4 else 2, hidden=32, n_blocks=2, num_classes=3), gen)
    x, c = torch.randn(shape, generator=gen), torch.randn(shape[0], generator=gen)
    out = net(x, c)
    assert out.shape == x.shape
    y0 = net(x, c, torch.zeros(shape[0], dtype=torch.long))
    y1 = net(x, c, torch.ones(shape[0], dtype=torch.long))
    null = net(x, c, torch.full((shape[0],), 3))
    assert (y0 - y1).abs().max() > 1e-3
    torch.testing.assert_close(null, out)  # no labels = the null label


@pytest.mark.parametrize("shape,mults", [((2, 1, 8, 8), (1, 2)), ((2, 3, 16, 16), (1, 2, 2))])
def test_unet_shape_grad_and_labels(shape, mults, gen):
    net = _randomise(UNet(in_channels=shape[1], channels=8, channel_mults=mults, num_res_blocks=1, num_classes=10), gen, 0.05)
    x = torch.randn(shape, generator=gen, requires_grad=True)
    c = torch.randn(shape[0], generator=gen)
    out = net(x, c, torch.tensor([1, 2]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().sum().backward()
    assert x.grad.abs().sum() > 0
    assert (net(x, c, torch.tensor([1, 2])) - net(x, c, torch.tensor([3, 4]))).abs().max() > 1e-4


def test_unet_rejects_bad_sizes():
    net = UNet(in_channels=1, channels=8, channel_mults=(1, 2, 2))
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.randn(1, 1, 6, 6), torch.zeros(1))
    with pytest.raises(ValueError, match="shape"):
        net(torch.randn(1, 3, 8, 8), torch.zeros(1))
    with pytest.raises(ValueError, match="channel_mults"):
        UNet(channel_mults=())


@pytest.mark.parametrize("kind,kw,shape", [("mlp", dict(dim=2, hidden=16), (4, 2)), ("unet", dict(channels=8), (2, 1, 8, 8))])
def test_net_rebuilds_from_config(kind, kw, shape, gen):
    net = _randomise(build_net(kind, **kw), gen, 0.05)
    cfg = net_config(net)
    twin = build_net(cfg.pop("kind"), **cfg)
    twin.load_state_dict(net.state_dict())
    x, c = torch.randn(shape, generator=gen), torch.randn(shape[0], generator=gen)
    torch.testing.assert_close(twin(x, c), net(x, c), rtol=0, atol=0)
    with pytest.raises(ValueError, match="net kind"):
        build_net("resnet")


class ExactNet(torch.nn.Module):
    """Outputs exactly what `parameterization` asks for at the (known) time `t`, from the oracle's score."""

    def __init__(self, mix, sde, t, param, sigma_data):
        super().__init__()
        self.mix, self.sde, self.t, self.param, self.sd = mix, sde, t, param, sigma_data

    def forward(self, x_in, c_noise):
        t = torch.full((x_in.shape[0],), self.t, dtype=x_in.dtype)
        m, std = self.sde.marginal_coefs(t)
        c_in = torch.rsqrt(m**2 * self.sd**2 + std**2)
        x = x_in / c_in[:, None]
        torch.testing.assert_close(c_noise, (std / m).log())
        s = self.mix.score(x, t, sde=self.sde)
        eps = -std[:, None] * s
        x0 = (x + std[:, None] ** 2 * s) / m[:, None]
        a, b = m * self.sd * c_in, std * c_in
        return {"eps": eps, "score": s, "x0": x0, "v": a[:, None] * eps - b[:, None] * x0 / self.sd}[self.param]


@pytest.mark.parametrize("param", scoresde.model.PARAMETERIZATIONS)
@pytest.mark.parametrize("t", [0.01, 0.5, 1.0])
def test_parameterizations_mean_the_same_score(sde, param, t, gen):
    """A net that outputs the exact eps / score / x0 / v gives the exact score, for every SDE."""
    torch.set_default_dtype(torch.float64)
    try:
        mix = scoresde.ring8()
        x = mix.sample(64, generator=gen) * 1.3
        model = ScoreModel(ExactNet(mix, sde, t, param, 0.7), sde, param, sigma_data=0.7)
        torch.testing.assert_close(model(x, t), mix.score(x, t, sde=sde), rtol=1e-8, atol=1e-8)
    finally:
        torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("param", scoresde.model.PARAMETERIZATIONS)
def test_target_reads_back_as_the_conditional_score(sde, param, gen):
    """Feeding `target(x0, ε, t)` through the read-out gives `-ε/σ`, the score of p(x_t | x_0)."""
    model = ScoreModel(MLP(2), sde, param, sigma_data=1.7)
    x0 = torch.randn(16, 2, generator=gen, dtype=torch.float64)
    noise = torch.randn(16, 2, generator=gen, dtype=torch.float64)
    t = torch.rand(16, generator=gen, dtype=torch.float64) * 0.99 + 0.01
    m, std, c_in, _ = model.preconditioning(t)
    xt = m[:, None] * x0 + std[:, None] * noise
    s = model.output_to_score(model.target(x0, noise, t), xt, sde.schedule(t))
    torch.testing.assert_close(s, -noise / std[:, None], rtol=1e-9, atol=1e-9)


def test_score_model_validation():
    with pytest.raises(ValueError, match="parameterization"):
        ScoreModel(MLP(2), scoresde.VPSDE(), "denoiser")
    with pytest.raises(ValueError, match="sigma_data"):
        ScoreModel(MLP(2), scoresde.VPSDE(), sigma_data=0.0)
    with pytest.raises(TypeError, match="sde"):
        ScoreModel(MLP(2), object())


def test_score_model_follows_input_dtype_and_float_t(gen):
    model = ScoreModel(MLP(2, hidden=8), scoresde.VESDE()).double()
    x = torch.randn(3, 2, generator=gen, dtype=torch.float64)
    assert model(x, 0.3).dtype == torch.float64


@pytest.mark.parametrize("body,kw,shape", [("mlp", dict(dim=4, hidden=16, n_blocks=2), (5, 1, 2, 2)),
                                           ("unet", dict(in_channels=1, channels=8, channel_mults=(1, 2), num_res_blocks=1), (3, 1, 8, 8))])
def test_classifier_net_logits_every_weight_used_and_rebuilds(body, kw, shape, gen):
    from scoresde.model import Classifier
    from scoresde.nets import ClassifierNet

    net = ClassifierNet(body, 6, **kw)
    x, c = torch.randn(shape, generator=gen), torch.randn(shape[0], generator=gen)
    assert torch.equal(net(x, c), torch.zeros(shape[0], 6))  # zero head: log K loss at the start
    _randomise(net, gen, 0.05)
    logits = net(x, c)
    assert logits.shape == (shape[0], 6) and net.num_classes == 6
    logits.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())  # no decoder left unused (DDP)
    cfg = net_config(net)
    twin = build_net(cfg.pop("kind"), **cfg)
    twin.load_state_dict(net.state_dict())
    torch.testing.assert_close(twin(x, c), logits, rtol=0, atol=0)
    # the wrapper feeds the net what ScoreModel feeds its net: c_in x and c_noise = log(σ/m), for any SDE
    for sde in (scoresde.VPSDE(), scoresde.VESDE(), scoresde.CosineVPSDE()):
        clf, ref = Classifier(net, sde, sigma_data=0.7), ScoreModel(MLP(4), sde, sigma_data=0.7)
        t = torch.rand(shape[0], generator=gen) * 0.9 + 0.05
        _, _, c_in, c_noise = ref.preconditioning(t)
        torch.testing.assert_close(clf(x, t), net(x * c_in.reshape(-1, 1, 1, 1), c_noise))
    with pytest.raises(ValueError, match="num_classes"):
        ClassifierNet(body, 1, **kw)
    with pytest.raises(ValueError, match="body"):
        ClassifierNet("resnet", 3)
