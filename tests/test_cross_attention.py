"""uPETe's CT-guided cross-attention block (``petsynth.nn.cross_attention``): shapes in 2D and 3D, the output
follows the CT (Q, K) and carries the PET (V), the relative position bias, padding that is never attended."""

import pytest
import torch

from petsynth.nn.cross_attention import CTGuidedCrossAttention, _relative_index


@pytest.mark.parametrize("dims, size", [(2, (20, 13)), (3, (6, 9, 8))])
def test_shape_is_kept_for_sizes_that_are_not_multiples_of_the_window(dims, size):
    block = CTGuidedCrossAttention(pet_channels=16, ct_channels=8, num_heads=4, window=4, spatial_dims=dims)
    pet, ct = torch.randn(2, 16, *size), torch.randn(2, 8, *size)
    out = block(pet, ct)
    assert out.shape == pet.shape and torch.isfinite(out).all()


def test_the_output_depends_on_the_ct_and_the_values_come_from_the_pet():
    torch.manual_seed(0)
    block = CTGuidedCrossAttention(pet_channels=8, ct_channels=4, num_heads=2, window=4).eval()
    pet, ct = torch.randn(1, 8, 8, 8), torch.randn(1, 4, 8, 8)
    out = block(pet, ct)
    assert (block(pet, torch.randn_like(ct)) - out).abs().max() > 1e-3  # another CT, other weights
    # values from the PET: with V's weights zero the block adds only V's and the output layer's bias
    with torch.no_grad():
        block.to_v.weight.zero_()
    constant = block(pet, ct) - pet
    assert torch.allclose(constant, constant[:, :, :1, :1].expand_as(constant), atol=1e-5)


def test_attention_within_a_window_matches_the_formula():
    """One window, one head: out = pet + W_o softmax(q k^T / sqrt(d) + B) v, computed by hand."""
    torch.manual_seed(1)
    block = CTGuidedCrossAttention(pet_channels=4, ct_channels=3, num_heads=1, head_dim=4, window=3).eval()
    pet, ct = torch.randn(1, 4, 3, 3), torch.randn(1, 3, 3, 3)
    p = block.pet_norm(pet).flatten(2).transpose(1, 2)[0]  # (9, 4)
    c = block.ct_norm(ct).flatten(2).transpose(1, 2)[0]
    q, k = block.to_qk(c).chunk(2, dim=-1)
    v = block.to_v(p)
    weights = torch.softmax(q @ k.T / 2.0 + block.attention_bias()[0], dim=-1)
    expected = pet[0].flatten(1).T + block.out(weights @ v)
    torch.testing.assert_close(block(pet, ct)[0].flatten(1).T, expected, atol=1e-5, rtol=1e-5)


def test_relative_bias_is_shared_by_pairs_with_the_same_offset():
    index = _relative_index(3, 2)  # positions (row, col) in row-major order
    assert index.shape == (9, 9) and index.max() == 24 and index.min() == 0
    # (0,0)->(1,1) and (1,1)->(2,2): the same offset, the same bias entry; the opposite offset another
    assert index[0, 4] == index[4, 8] and index[4, 0] != index[0, 4]
    assert len(set(index.diagonal().tolist())) == 1


def test_padded_positions_are_never_attended():
    """A 4 x 5 map with windows of 4: the fifth column is a window of its own, 4 valid positions of 16. Its
    output must be the attention over those 4 keys only, with their bias entries, computed by hand."""
    torch.manual_seed(2)
    block = CTGuidedCrossAttention(pet_channels=4, ct_channels=4, num_heads=1, head_dim=4, window=4).eval()
    pet, ct = torch.randn(1, 4, 4, 5), torch.randn(1, 4, 4, 5)
    p = block.pet_norm(pet)[0, :, :, 4].T  # (4 rows, channels): the last column, normalised over the whole map
    c = block.ct_norm(ct)[0, :, :, 4].T
    q, k = block.to_qk(c).chunk(2, dim=-1)
    v = block.to_v(p)
    inside = torch.arange(4) * 4  # window positions (row r, column 0) of a 4 x 4 window
    bias = block.attention_bias()[0][inside][:, inside]
    expected = pet[0, :, :, 4].T + block.out(torch.softmax(q @ k.T / 2.0 + bias, dim=-1) @ v)
    torch.testing.assert_close(block(pet, ct)[0, :, :, 4].T, expected, atol=1e-5, rtol=1e-5)


def test_the_bias_learns():
    block = CTGuidedCrossAttention(pet_channels=4, ct_channels=4, num_heads=2, window=2)
    block(torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4)).square().mean().backward()
    assert block.relative_bias.grad is not None and block.relative_bias.grad.abs().sum() > 0
