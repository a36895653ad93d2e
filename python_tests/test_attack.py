"""Empirical check of the certificates against an attack: PGD with expectation over the noise
(EOT) on the smoothed models of a small trained digits model, inside each certified radius.

A certificate is broken only when the attacked point's smoothed prediction is *significantly*
different from the certified one: for the vote model, the Clopper-Pearson upper bound (at 1e-3)
on the certified label's probability falls below 1/2; for the soft model, every positive gallery
row is beaten by some negative even after the Monte-Carlo bound. The trial count is printed.
"""

import numpy as np
import pytest
import torch

from retrievalguard_fast import gaussian_noise, nn_vote
from retrievalguard_fast.digits import DigitsEmbeddingNet, load_digits_split
from retrievalguard_fast.gallery import Gallery
from retrievalguard_fast.smoothing import SmoothedRetriever
from retrievalguard_fast.stats import clopper_pearson_upper, mean_embedding_deviation

SIGMA = 0.25


@pytest.fixture(scope="module")
def setup():
    from retrievalguard_fast.training import train_embedding_model

    torch.manual_seed(0)
    data = load_digits_split(seed=1)
    model = train_embedding_model(DigitsEmbeddingNet(), data.gallery_x, data.gallery_y, sigma=SIGMA, epochs=15, seed=1)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, Gallery.from_model(model, data.gallery_x, data.gallery_y), data


def class_logits(emb, gallery, temperature=0.05):
    """Differentiable surrogate of 1-NN retrieval: per class, logsumexp of -|e - g|^2 / T."""
    d = ((emb[:, None, :] - gallery.embeddings[None, :, :]) ** 2).sum(-1)
    scores = -d / temperature
    out = torch.full((emb.shape[0], gallery.num_classes), -1e9)
    for c in range(gallery.num_classes):
        out[:, c] = torch.logsumexp(scores[:, gallery.labels == c], dim=1)
    return out


def pgd_eot(model, gallery, x, label, radius, soft, steps=20, samples=64, seed=0):
    """Maximise the loss of the certified label within the l2 ball of `radius`."""
    gen = torch.Generator().manual_seed(seed)
    delta = torch.zeros_like(x, requires_grad=True)
    step = 2.5 * radius / steps
    for _ in range(steps):
        noise = torch.randn((samples,) + tuple(x.shape), generator=gen) * SIGMA
        emb = torch.nn.functional.normalize(model(x[None] + delta[None] + noise), dim=1)
        if soft:  # attack the mean embedding F
            emb = emb.mean(0, keepdim=True)
        loss = torch.nn.functional.cross_entropy(class_logits(emb, gallery), torch.full((emb.shape[0],), label))
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta += step * grad / (grad.norm() + 1e-12)
            norm = delta.norm()
            if norm > 0.99 * radius:
                delta *= 0.99 * radius / norm
    return (x + delta).detach()


def smoothed_evidence(model, gallery, x_adv, label, m=20000, seed=99):
    """Vote counts and mean embedding of the smoothed models at x_adv (fresh noise stream)."""
    noisy = gaussian_noise(x_adv, SIGMA, m, seed=seed, stream=0)
    with torch.inference_mode():
        emb = model(noisy)
    counts, sums = nn_vote(emb, gallery.embeddings, gallery.labels, gallery.num_classes)
    return counts.numpy(), sums.numpy() / m


def soft_significantly_broken(mean, gallery, label, m):
    """True when every positive is beaten by some negative even at the edge of the MC bound."""
    t = mean_embedding_deviation(m, 1e-3, gallery.dim)
    g, n2, labels = gallery.embeddings64, gallery.sq_norms64, gallery.labels_np
    pos, neg = g[labels == label], g[labels != label]
    n2p, n2n = n2[labels == label], n2[labels != label]
    sep = np.sqrt(np.maximum(n2p[:, None] + n2n[None, :] - 2 * pos @ neg.T, 1e-30))
    uf = (pos @ mean)[:, None] - (neg @ mean)[None, :]
    uf = uf / sep
    tau = (n2p[:, None] - n2n[None, :]) / (2 * sep)
    beaten = (uf + t < tau).any(axis=1)  # u.F <= u.F_hat + t < tau: b surely closer than p
    return bool(beaten.all())


def test_pgd_eot_never_breaks_a_certificate(setup):
    model, gallery, data = setup
    q, y = data.query_x[:12], data.query_y[:12]
    certs = SmoothedRetriever(model, gallery, SIGMA, batch_size=5000, seed=5).certify(q, y, n0=100, n=5000, alpha=0.001)
    trials = broken = 0
    for i, c in enumerate(certs):
        x = torch.from_numpy(q[i])
        for soft, pred, radius in ((False, c.vote_prediction, c.vote_radius), (True, c.soft_prediction, c.soft_gaussian_radius)):
            if pred < 0 or radius is None:
                continue
            x_adv = pgd_eot(model, gallery, x, pred, radius, soft, seed=i)
            assert float((x_adv - x).norm()) < radius
            counts, mean = smoothed_evidence(model, gallery, x_adv, pred)
            trials += 1
            if soft:
                broken += soft_significantly_broken(mean, gallery, pred, 20000)
            else:
                broken += float(clopper_pearson_upper(int(counts[pred]), int(counts.sum()), 1e-3)) < 0.5
    print(f"\nPGD-EOT inside certified radii: {trials} attacks (vote + soft), {broken} certificates broken")
    assert trials >= 12  # the check is not vacuous
    assert broken == 0


def test_the_attack_has_teeth_beyond_the_radius(setup):
    """The same attack with a much larger budget does flip smoothed predictions, so the zero
    above means the certificates held, not that the attack is weak."""
    model, gallery, data = setup
    q, y = data.query_x[:6], data.query_y[:6]
    flipped = 0
    for i in range(len(q)):
        x = torch.from_numpy(q[i])
        x_adv = pgd_eot(model, gallery, x, int(y[i]), 3.0, soft=False, seed=i)
        counts, _ = smoothed_evidence(model, gallery, x_adv, int(y[i]), m=5000)
        flipped += int(np.argmax(counts)) != int(y[i])
    print(f"\nPGD-EOT with l2 budget 3.0: {flipped}/{len(q)} smoothed predictions flipped")
    assert flipped >= 3
