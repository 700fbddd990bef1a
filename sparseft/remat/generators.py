"""Graph generators for the rematerialization planner.

- :func:`random_layered`: random layered DAGs in the style of Gagrani et al. (2022), "Neural
  Topological Ordering for Computation Graphs", appendix A (the ``random_layered_n*`` graphs
  of the Moccasin paper);
- :func:`training_graph`: the training graph of a chain of layers (forward nodes, a loss node
  and backward nodes), the shape of the Checkmate/Moccasin ``*_train`` graphs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from sparseft._validation import check_int, check_real
from sparseft.remat.graph import Graph

__all__ = ["random_layered", "training_graph", "transformer_graph"]


def random_layered(
    n: int,
    seed: int = 0,
    *,
    width: float = 0.3,
    layer_var: float = 0.75,
    edge_density: float = 0.2,
    skip_density: float = 0.14,
    max_memory: int = 8000,
    max_duration: int = 1000,
) -> Graph:
    """A random layered DAG like the synthetic graphs of Gagrani et al. (2022, appendix A).

    One source node (id 0) feeds the first layer and one sink node (id 1) reads every node
    without another user. The ``n - 2`` other nodes are cut into layers whose widths are drawn
    around ``2 * width * sqrt(n)`` with relative spread ``layer_var``. Each node reads every
    node of the previous layer with probability ``edge_density`` (at least one), and gets up
    to two skip connections from older layers, each with probability ``skip_density``. Output
    sizes are multiples of 10 in [10, max_memory], durations integers in [0, max_duration);
    the source and the sink have duration 0. ``graph.order`` is the layer order.

    Parameters
    ----------
    n : int
        Number of nodes (>= 3).
    seed : int
        Random seed (the same seed gives the same graph).
    width, layer_var, edge_density, skip_density : float
        Shape parameters as in the graph names ``random_layered_n{n}_w{width}_nlv{layer_var}
        _ed{edge_density}_scd{skip_density}``.
    max_memory, max_duration : int
        Ranges of the node costs.

    Returns
    -------
    Graph
    """
    n = check_int(n, "n", 3)
    seed = check_int(seed, "seed", 0)
    width = check_real(width, "width", 0.0, 10.0)
    layer_var = check_real(layer_var, "layer_var", 0.0, 10.0)
    edge_density = check_real(edge_density, "edge_density", 0.0, 1.0)
    skip_density = check_real(skip_density, "skip_density", 0.0, 1.0)
    max_memory = check_int(max_memory, "max_memory", 10)
    max_duration = check_int(max_duration, "max_duration", 1)
    rng = np.random.default_rng(seed)
    mu = max(1.0, 2.0 * width * math.sqrt(n))
    # cut the inner nodes into layers of random width
    layers: list[list[int]] = []
    nxt = 2
    while nxt < n:
        w = round(rng.normal(mu, layer_var * mu))
        w = max(1, min(w, n - nxt))
        layers.append(list(range(nxt, nxt + w)))
        nxt += w
    edges: list[tuple[int, int]] = [(0, v) for v in layers[0]]
    has_user = np.zeros(n, dtype=bool)
    has_user[0] = True
    # each node reads part of the previous layer and, sometimes, an older node
    for li in range(1, len(layers)):
        prev = layers[li - 1]
        older = [v for layer in layers[: li - 1] for v in layer]
        for v in layers[li]:
            ins = [u for u in prev if rng.random() < edge_density]
            if not ins:
                ins = [prev[int(rng.integers(len(prev)))]]
            for _ in range(2):
                if older and rng.random() < skip_density:
                    ins.append(older[int(rng.integers(len(older)))])
            for u in dict.fromkeys(ins):
                edges.append((u, v))
                has_user[u] = True
    edges += [(v, 1) for v in range(2, n) if not has_user[v]]
    memory = (rng.integers(1, max_memory // 10 + 1, size=n) * 10).tolist()
    duration = rng.integers(0, max_duration, size=n).tolist()
    duration[0] = duration[1] = 0
    order = [0, *[v for layer in layers for v in layer], 1]
    name = f"random_layered_n{n}_w{width}_nlv{layer_var}_ed{edge_density}_scd{skip_density}_seed{seed}"
    return Graph(list(range(n)), edges, memory, duration, order=order, name=name)


def training_graph(
    n_layers: int,
    *,
    memory: Sequence[int] | None = None,
    duration: Sequence[int] | None = None,
    backward_factor: float = 2.0,
    seed: int = 0,
) -> Graph:
    """The training graph of a chain of ``n_layers`` layers.

    Nodes: forward ``"f0"`` .. ``"f{L-1}"`` (``f{i}`` reads ``f{i-1}``), ``"loss"`` (reads the
    last forward output) and backward ``"b{L-1}"`` .. ``"b0"``: ``b{i}`` reads the gradient
    from above (``b{i+1}``, or ``loss`` for the last layer), the layer's output ``f{i}`` and its
    input ``f{i-1}`` (for ``i > 0``). The gradient ``b{i}`` has the size of the layer's input.

    Parameters
    ----------
    n_layers : int
        Number of layers (>= 1).
    memory : sequence of int, optional
        Output size of each forward layer; default random integers in [1, 100] from ``seed``.
    duration : sequence of int, optional
        Forward cost of each layer; default random integers in [1, 100] from ``seed``.
    backward_factor : float
        Backward cost = ``round(backward_factor * forward cost)``.
    seed : int
        Seed for the default memory and duration.

    Returns
    -------
    Graph
        With ``backward`` flags set and the order forward, loss, backward.
    """
    L = check_int(n_layers, "n_layers", 1)
    seed = check_int(seed, "seed", 0)
    backward_factor = check_real(backward_factor, "backward_factor", 0.0, 1e6)
    rng = np.random.default_rng(seed)

    def per_layer(values: Sequence[int] | None, name: str) -> list[int]:
        if values is None:
            return rng.integers(1, 101, size=L).tolist()
        vals = list(values)
        if len(vals) != L:
            raise ValueError(f"{name} must have one value per layer ({L}), got {len(vals)}")
        return vals

    mem = per_layer(memory, "memory")
    dur = per_layer(duration, "duration")
    nodes: list[str] = []
    m: dict[str, int] = {}
    d: dict[str, int] = {}
    bw: dict[str, bool] = {}
    edges: list[tuple[str, str]] = []
    # forward chain
    for i in range(L):
        f = f"f{i}"
        nodes.append(f)
        m[f], d[f], bw[f] = mem[i], dur[i], False
        if i > 0:
            edges.append((f"f{i - 1}", f))
    nodes.append("loss")
    m["loss"], d["loss"], bw["loss"] = 1, 1, False
    edges.append((f"f{L - 1}", "loss"))
    # backward chain, last layer first
    for i in range(L - 1, -1, -1):
        b = f"b{i}"
        nodes.append(b)
        m[b] = mem[i - 1] if i > 0 else mem[0]
        d[b] = round(backward_factor * float(dur[i]))
        bw[b] = True
        edges.append(("loss" if i == L - 1 else f"b{i + 1}", b))
        edges.append((f"f{i}", b))
        if i > 0:
            edges.append((f"f{i - 1}", b))
    return Graph(nodes, edges, m, d, order=nodes, backward=bw, name=f"training_chain_L{L}_seed{seed}")


def transformer_graph(
    n_layers: int = 6,
    *,
    batch: int = 8,
    seq: int = 256,
    d_model: int = 512,
    n_heads: int = 8,
    vocab: int = 256,
) -> Graph:
    """The graph of one training step of a GPT-2-shaped transformer, as the Trainer builds it.

    One node per forward op and one per backward op (``"<op>"`` and ``"<op>.backward"``). Ops,
    in order: ``"embed"`` (token + position embedding), then per block ``i`` ``"h{i}.ln_1"``,
    ``"h{i}.attn.c_attn"``, ``"h{i}.attn.core"`` (causal attention, also returning its
    log-sum-exp), ``"h{i}.attn.c_proj"``, ``"h{i}.add_1"`` (residual), ``"h{i}.ln_2"``,
    ``"h{i}.mlp.c_fc"``, ``"h{i}.mlp.gelu"``, ``"h{i}.mlp.c_proj"``, ``"h{i}.add_2"``, and
    ``"ln_f"`` and ``"loss"`` (the fused head and cross-entropy, a scalar output). A forward
    node reads its ops' inputs; a backward node reads the backward nodes of the op's users (the
    gradients of its output), the op's inputs and its output, and produces the gradients of its
    inputs. Memory is bytes of float32 outputs from the shapes (LayerNorm adds its mean and rstd,
    attention its log-sum-exp); duration is the op's FLOPs in units of 2**20 (at least 1), a
    backward twice its forward. The backward nodes of ops with parameters (embedding, LayerNorms,
    linears, loss) accumulate parameter gradients and are marked ``once``; every node of block
    ``i`` has ``block = i`` (None for the embedding, ``ln_f`` and the loss).

    Parameters
    ----------
    n_layers : int
        Number of transformer blocks (>= 1); the graph has ``6 + 20 * n_layers`` nodes.
    batch, seq, d_model, n_heads, vocab : int
        Shapes (>= 1); ``d_model`` a multiple of ``n_heads``.

    Returns
    -------
    Graph
        With ``backward``, ``once`` and ``block`` set and the order forward, then backward in
        reverse.
    """
    L = check_int(n_layers, "n_layers", 1)
    B = check_int(batch, "batch", 1)
    T = check_int(seq, "seq", 1)
    d = check_int(d_model, "d_model", 1)
    H = check_int(n_heads, "n_heads", 1)
    V = check_int(vocab, "vocab", 1)
    if d % H:
        raise ValueError(f"d_model must be a multiple of n_heads ({H}), got {d}")
    act = B * T * d * 4
    stats = 2 * B * T * 4  # LayerNorm mean and rstd
    bt = B * T
    # (name, inputs, output bytes, forward FLOPs, has parameters, block)
    ops: list[tuple[str, list[str], int, int, bool, int | None]] = [("embed", [], act, bt * d, True, None)]
    x = "embed"
    for i in range(L):
        h = f"h{i}."
        ops += [
            (h + "ln_1", [x], act + stats, 8 * bt * d, True, i),
            (h + "attn.c_attn", [h + "ln_1"], 3 * act, 2 * bt * d * 3 * d, True, i),
            (h + "attn.core", [h + "attn.c_attn"], act + B * H * T * 4, 2 * B * T * T * d, False, i),
            (h + "attn.c_proj", [h + "attn.core"], act, 2 * bt * d * d, True, i),
            (h + "add_1", [x, h + "attn.c_proj"], act, bt * d, False, i),
            (h + "ln_2", [h + "add_1"], act + stats, 8 * bt * d, True, i),
            (h + "mlp.c_fc", [h + "ln_2"], 4 * act, 2 * bt * d * 4 * d, True, i),
            (h + "mlp.gelu", [h + "mlp.c_fc"], 4 * act, 8 * bt * 4 * d, False, i),
            (h + "mlp.c_proj", [h + "mlp.gelu"], act, 2 * bt * 4 * d * d, True, i),
            (h + "add_2", [h + "add_1", h + "mlp.c_proj"], act, bt * d, False, i),
        ]
        x = h + "add_2"
    ops += [
        ("ln_f", [x], act + stats, 8 * bt * d, True, None),
        ("loss", ["ln_f"], 4, 2 * bt * d * V, True, None),
    ]
    out_bytes = {name: m for name, _, m, _, _, _ in ops}
    users: dict[str, list[str]] = {name: [] for name, *_ in ops}
    for name, ins, *_ in ops:
        for u in ins:
            users[u].append(name)
    nodes: list[str] = []
    edges: list[tuple[str, str]] = []
    memory: list[int] = []
    duration: list[int] = []
    backward: list[bool] = []
    once: list[bool] = []
    block: list[int | None] = []

    def add(node: str, mem: int, flops: int, bw: bool, one: bool, blk: int | None) -> None:
        nodes.append(node)
        memory.append(mem)
        duration.append(max(1, flops >> 20))
        backward.append(bw)
        once.append(one)
        block.append(blk)

    for name, ins, mem, flops, _, blk in ops:
        add(name, mem, flops, False, False, blk)
        edges += [(u, name) for u in ins]
    for name, ins, _, flops, params, blk in reversed(ops):
        b = name + ".backward"
        # the gradients of the op's inputs (the embedding's input, token ids, has none)
        add(b, sum(out_bytes[u] for u in ins), 2 * flops, True, params, blk)
        edges += [(u + ".backward", b) for u in users[name]]
        edges += [(u, b) for u in [*ins, name]]
    return Graph(
        nodes,
        edges,
        memory,
        duration,
        order=nodes,
        backward=backward,
        once=once,
        block=block,
        name=f"transformer_L{L}_b{B}_t{T}_d{d}",
    )
