"""sft.Graph: construction, node-link JSON in every variant, validation messages, no-remat peak."""

from __future__ import annotations

import json

import numpy as np
import pytest

import sparseft as sft

# no-remat peak and total duration from the shared README (an independent simulator)
README_PEAKS = {
    "random_layered_n100.json": (46_319, 47_769),
    "random_layered_n250.json": (146_840, 125_569),
    "random_layered_n1000.json": (608_619, 497_270),
    "ResNet50_b256_224x224_train.json": (38_059_356_160, 405_670),
}


def chain(n: int = 3) -> sft.Graph:
    return sft.Graph(list(range(n)), [(i, i + 1) for i in range(n - 1)], [4] * n, [1] * n)


def test_basic_properties() -> None:
    g = sft.Graph(["a", "b", "c"], [("a", "b"), ("b", "c"), ("a", "c")], {"a": 1, "b": 2, "c": 3}, [5, 6, 7])
    assert g.n == 3 and len(g) == 3
    assert g.nodes == ["a", "b", "c"]
    assert sorted(g.edges) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert g.memory.tolist() == [1, 2, 3] and g.duration.tolist() == [5, 6, 7]
    assert g.total_duration == 18
    assert g.order == ["a", "b", "c"]
    assert sorted(g.predecessors("c")) == ["a", "b"] and sorted(g.successors("a")) == ["b", "c"]
    # peak: computing c needs a, b resident: 1 + 2 + 3
    assert g.peak_memory() == 6
    assert g.min_budget() == (6, "c")


def test_peak_memory_eager_free_and_custom_order() -> None:
    # diamond: computing c keeps a (last user not yet), b, c; then a is freed before d
    g = sft.Graph(list("abcd"), [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")], [1, 10, 2, 1], [1, 1, 1, 1])
    assert g.peak_memory() == 1 + 10 + 2
    # the order matters: x -> y with an independent sink z
    h = sft.Graph(list("xyz"), [("x", "y")], [5, 1, 7], [1, 1, 1])
    assert h.peak_memory() == 7  # x, y (x freed, y freed: a sink), then z alone
    assert h.peak_memory(["x", "z", "y"]) == 12
    # sinks are freed right after they are computed
    g2 = sft.Graph([0, 1, 2], [(0, 1), (0, 2)], [5, 7, 9], [1, 1, 1])
    assert g2.peak_memory() == 5 + 9
    with pytest.raises(ValueError, match="order is not topological"):
        g.peak_memory(["b", "a", "c", "d"])


def test_duplicate_edges_are_merged() -> None:
    g = sft.Graph([0, 1], [(0, 1), (0, 1)], [1, 1], [1, 1])
    assert g.edges == [(0, 1)]


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"memory": [1, -2, 3]}, ValueError, r"memory of node 1 must be a non-negative integer, got -2"),
        (
            {"duration": [1, 2.5, 3]},
            ValueError,
            r"duration of node 1 must be a non-negative integer, got 2.5",
        ),
        ({"memory": [1, "x", 3]}, TypeError, r"memory of node 1 must be a non-negative integer, got str"),
        ({"memory": [1, True, 3]}, TypeError, r"memory of node 1 .* got bool"),
        ({"memory": [1, 2]}, ValueError, r"memory must have one value per node \(3\), got 2"),
        ({"memory": {0: 1, 1: 2}}, ValueError, r"memory is missing for node 2"),
        ({"memory": None}, ValueError, r"memory is required"),
        ({"duration": None}, ValueError, r"duration is required"),
        ({"edges": [(0, 1), (1, 5)]}, ValueError, r"edges\[1\] = \(1, 5\): unknown target node 5"),
        ({"edges": [(9, 1)]}, ValueError, r"unknown source node 9"),
        ({"edges": [(0, 1, 2)]}, TypeError, r"edges\[0\] must be a \(source, target\) pair"),
        ({"edges": "01"}, TypeError, r"edges must be an iterable of \(source, target\) pairs"),
        ({"nodes": [0, 0, 1]}, ValueError, r"nodes must be unique, got 0 twice"),
        ({"order": [0, 2, 1]}, ValueError, r"order is not topological: edge 1 -> 2"),
        ({"order": [0, 1]}, ValueError, r"order must list all 3 nodes once, got 2"),
        ({"order": [0, 1, 7]}, ValueError, r"order names unknown node 7"),
        ({"order": [0, 1, 1]}, ValueError, r"order must list every node exactly once"),
        (
            {"edges": [([0], 1)]},
            TypeError,
            r"edges\[0\] source must be a node id \(an int or str\), got unhashable list",
        ),
        (
            {"edges": [(0, 1), (1, {2})]},
            TypeError,
            r"edges\[1\] target must be a node id .* got unhashable set",
        ),
        (
            {"edges": [(True, 2)]},
            TypeError,
            r"edges\[0\] source must be a node id \(an int or str\), got bool True",
        ),
        (
            {"order": [[0], 1, 2]},
            TypeError,
            r"order\[0\] must be a node id \(an int or str\), got unhashable list",
        ),
        ({"order": [0, True, 2]}, TypeError, r"order\[1\] must be a node id .* got bool True"),
        ({"nodes": [(0, 1), 1, 2]}, TypeError, r"nodes\[0\] must be an int or str id, got tuple \(0, 1\)"),
        ({"nodes": [0, 1.0, 2]}, TypeError, r"nodes\[1\] must be an int or str id, got float 1.0"),
        ({"nodes": [0, None, 2]}, TypeError, r"nodes\[1\] must be an int or str id, got NoneType"),
    ],
)
def test_validation_messages(kwargs: dict, exc: type, match: str) -> None:
    args = {"nodes": [0, 1, 2], "edges": [(0, 1), (1, 2)], "memory": [1, 2, 3], "duration": [1, 1, 1]}
    args.update(kwargs)
    nodes = args.pop("nodes")
    edges = args.pop("edges")
    memory = args.pop("memory")
    duration = args.pop("duration")
    with pytest.raises(exc, match=match):
        sft.Graph(nodes, edges, memory, duration, **args)


def test_memory_and_duration_sums_must_stay_below_2_62() -> None:
    # the C simulator sums memory and durations in int64: a graph whose sums could wrap is rejected
    with pytest.raises(
        ValueError, match=r"memory must sum to less than 2\*\*62 over all nodes .* got a sum of 138"
    ):
        sft.Graph([0, 1, 2], [], memory=[2**62 - 1] * 3, duration=[1] * 3)
    with pytest.raises(ValueError, match=r"duration must sum to less than 2\*\*62 over all nodes"):
        sft.Graph(list(range(5)), [], memory=[1] * 5, duration=[2**62 - 1] * 5)
    with pytest.raises(ValueError, match=r"duration must sum to less than 2\*\*62"):
        sft.Graph([0, 1], [], memory=[1, 1], duration=[2**61, 2**61])
    # just below the bound: exact totals, and the peak of everything resident is exact too
    g = sft.Graph(
        [0, 1, 2], [(0, 2), (1, 2)], memory=[2**61, 2**60, 2**60 - 1], duration=[2**61, 2**61 - 1, 0]
    )
    assert g.total_duration == 2**62 - 1
    assert g.peak_memory() == 2**62 - 1
    assert sft.simulate(g, [("compute", 0), ("compute", 1), ("compute", 2)]) == (2**62 - 1, 2**62 - 1)


def test_node_ids_are_plain_ints_or_strs_and_round_trip(tmp_path) -> None:
    # NumPy integer ids are stored as Python ints, so to_json writes plain JSON ints
    g = sft.Graph(
        np.arange(3), [(np.int64(0), np.int64(1)), (1, 2)], [1, 2, 3], [1, 1, 1], order=np.arange(3)
    )
    assert g.nodes == [0, 1, 2] and all(type(v) is int for v in g.nodes)
    assert g.edges == [(0, 1), (1, 2)] and g.order == [0, 1, 2]
    assert g.index(np.int64(2)) == 2
    g2 = sft.Graph.from_json(json.loads(json.dumps(g.to_json(tmp_path / "g.json"))))
    assert g2.nodes == g.nodes and g2.edges == g.edges and g2.order == g.order
    h = sft.Graph.from_json(tmp_path / "g.json")
    assert h.nodes == g.nodes and np.array_equal(h.memory, g.memory)
    s = sft.Graph([np.str_("a"), "b"], [("a", "b")], [1, 1], [1, 1])
    assert all(type(v) is str for v in s.nodes)
    # bools are never node ids, although True == 1
    with pytest.raises(ValueError, match=r"node must be a node of the graph, got True"):
        g.index(True)


def test_cycle_names_the_nodes_on_it() -> None:
    edges = [("in", "a"), ("a", "b"), ("b", "c"), ("c", "a"), ("c", "out")]
    with pytest.raises(
        ValueError, match=r"found a cycle: '(a|b|c)' -> '(a|b|c)' -> '(a|b|c)' -> '(a|b|c)'"
    ) as ei:
        sft.Graph(["in", "a", "b", "c", "out"], edges, [1] * 5, [1] * 5)
    msg = str(ei.value)
    assert "'in'" not in msg and "'out'" not in msg
    with pytest.raises(ValueError, match=r"found a cycle: 'x' -> 'x'"):
        sft.Graph(["x"], [("x", "x")], [1], [1])


NODE_LINK_VARIANTS = [
    # networkx default: id, source/target, "links"
    {
        "nodes": [{"id": 0, "memory": 3, "duration": 1}, {"id": 1, "memory": 4, "duration": 2}],
        "links": [{"source": 0, "target": 1}],
    },
    # Checkmate graphs: id + name, cost_ram/cost_cpu
    {
        "nodes": [
            {"id": 0, "name": "conv", "cost_ram": 3, "cost_cpu": 1, "backward": False},
            {"id": 1, "name": "conv_backward", "cost_ram": 4, "cost_cpu": 2, "backward": True},
        ],
        "links": [{"source": 0, "target": 1}],
    },
    # random_layered graphs: name, out_cost/duration, "0"/"1" links, graph.order
    {
        "graph": {"order": [0, 1]},
        "nodes": [{"name": 0, "out_cost": 3, "duration": 1}, {"name": 1, "out_cost": 4, "duration": 2}],
        "links": [{"0": 0, "1": 1}],
    },
    # networkx >= 3.4 may write "edges" instead of "links"
    {
        "nodes": [{"id": 0, "memory": 3, "duration": 1}, {"id": 1, "memory": 4, "duration": 2}],
        "edges": [{"source": 0, "target": 1}],
    },
]


@pytest.mark.parametrize("data", NODE_LINK_VARIANTS)
def test_from_json_variants_dict_and_path(data: dict, tmp_path) -> None:
    for src in (data, tmp_path / "g.json"):
        if not isinstance(src, dict):
            src.write_text(json.dumps(data))
        g = sft.Graph.from_json(src)
        assert g.nodes == [0, 1]
        assert g.memory.tolist() == [3, 4] and g.duration.tolist() == [1, 2]
        assert g.edges == [(0, 1)]
        assert g.peak_memory() == 7


def test_from_json_null_cost_falls_back_to_the_next_key() -> None:
    # memory | out_cost | cost_ram (and duration | cost_cpu) are alternatives: a null one counts as absent
    data = {
        "nodes": [
            {"id": 0, "memory": None, "out_cost": 5, "duration": None, "cost_cpu": 2},
            {"id": 1, "memory": 3, "cost_ram": None, "duration": 1},
        ]
    }
    g = sft.Graph.from_json(data)
    assert g.memory.tolist() == [5, 3] and g.duration.tolist() == [2, 1]
    with pytest.raises(
        ValueError,
        match=r"nodes\[0\] \(id 0\) has no memory: expected one of memory, out_cost, cost_ram with a non-null value",
    ):
        sft.Graph.from_json({"nodes": [{"id": 0, "memory": None, "duration": 1}]})
    with pytest.raises(
        ValueError, match=r"has no duration: expected one of duration, cost_cpu with a non-null value"
    ):
        sft.Graph.from_json({"nodes": [{"id": 0, "memory": 1, "duration": None, "cost_cpu": None}]})


def test_from_json_unreadable_files_name_the_source(tmp_path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(
        ValueError, match=r"source '.*deep\.json' is not valid JSON: nested too deeply to parse"
    ):
        sft.Graph.from_json(deep)
    binary = tmp_path / "latin1.json"
    binary.write_bytes('{"nodes": [], "graph": {"name": "caf\u00e9"}}'.encode("latin-1"))
    with pytest.raises(
        ValueError, match=r"source '.*latin1\.json' is not UTF-8 text: 'utf-8' codec can't decode"
    ):
        sft.Graph.from_json(binary)
    big = tmp_path / "big.json"
    big.write_text('{"nodes": [' + "9" * 5000 + "]}")
    with pytest.raises(ValueError, match=r"source '.*big\.json' is not valid JSON"):
        sft.Graph.from_json(big)


def test_from_json_labels_and_backward() -> None:
    g = sft.Graph.from_json(NODE_LINK_VARIANTS[1])
    assert g.label(1) == "conv_backward"
    assert g.backward.tolist() == [False, True]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"links": []}, r"source must have a 'nodes' list"),
        (
            {"nodes": [{"id": 0, "duration": 1}]},
            r"nodes\[0\] \(id 0\) has no memory: expected one of memory, out_cost, cost_ram",
        ),
        ({"nodes": [{"id": 0, "memory": 1}]}, r"has no duration: expected one of duration, cost_cpu"),
        ({"nodes": [{"memory": 1, "duration": 1}]}, r"every node must be an object with an 'id'"),
        (
            {"nodes": [{"id": 0, "memory": 1, "duration": 1}], "links": [{"from": 0, "to": 1}]},
            r"links\[0\] must have 'source'/'target' \(or '0'/'1'\)",
        ),
        (
            {"nodes": [{"id": 0, "memory": 1, "duration": 1}], "links": [{"source": 0, "target": 3}]},
            r"unknown target node 3",
        ),
    ],
)
def test_from_json_malformed(data: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sft.Graph.from_json(data)


def test_from_json_type_errors(tmp_path) -> None:
    with pytest.raises(TypeError, match="source must be a file path or a dict, got int"):
        sft.Graph.from_json(3)  # type: ignore[arg-type]
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        sft.Graph.from_json(bad)


def test_to_json_round_trip_and_atomic_write(tmp_path) -> None:
    g = sft.graphs.training_graph(3, seed=1)
    path = tmp_path / "g.json"
    d = g.to_json(path)
    assert json.loads(path.read_text()) == d
    g2 = sft.Graph.from_json(path)
    assert g2.nodes == g.nodes and g2.edges == g.edges and g2.order == g.order
    assert np.array_equal(g2.memory, g.memory) and np.array_equal(g2.duration, g.duration)
    assert g2.backward.tolist() == g.backward.tolist()
    assert [p.name for p in tmp_path.iterdir()] == ["g.json"]  # no temporary file left behind
    # a failing write leaves the old file intact
    with pytest.raises(FileNotFoundError):
        g.to_json(tmp_path / "missing-dir" / "g.json")
    assert json.loads(path.read_text()) == d


def test_real_graphs_match_readme(shared_data) -> None:
    folder = shared_data / "remat-graphs"
    if not folder.is_dir():
        pytest.skip(f"{folder} not present")
    for name, (peak, total) in README_PEAKS.items():
        g = sft.Graph.from_json(folder / name)
        assert g.peak_memory() == peak, name
        assert g.total_duration == total, name
    # every graph in the folder loads and is acyclic
    for path in sorted(folder.glob("*.json")):
        g = sft.Graph.from_json(path)
        assert g.n > 0 and g.peak_memory() > 0


def test_generators() -> None:
    g = sft.graphs.random_layered(60, seed=3)
    assert g.n == 60 and g.order[0] == 0 and g.order[-1] == 1
    assert g.predecessors(0) == [] and g.successors(1) == []
    assert all(m % 10 == 0 for m in g.memory.tolist())
    g_again = sft.graphs.random_layered(60, seed=3)
    assert g_again.edges == g.edges and np.array_equal(g_again.memory, g.memory)
    assert sft.graphs.random_layered(60, seed=4).edges != g.edges
    t = sft.graphs.training_graph(4, memory=[10, 20, 30, 40], duration=[1, 2, 3, 4])
    assert t.n == 9 and t.order == ["f0", "f1", "f2", "f3", "loss", "b3", "b2", "b1", "b0"]
    assert sorted(t.predecessors("b2")) == ["b3", "f1", "f2"]
    assert t.duration[t.index("b3")] == 8
    assert t.backward.tolist() == [False] * 5 + [True] * 4
    with pytest.raises(ValueError, match=r"n: expected an int >= 3, got 2"):
        sft.graphs.random_layered(2)
    with pytest.raises(ValueError, match=r"memory must have one value per layer \(2\), got 1"):
        sft.graphs.training_graph(2, memory=[1])
    with pytest.raises(ValueError, match=r"edge_density: expected a number in \[0.0, 1.0\], got 2.0"):
        sft.graphs.random_layered(10, edge_density=2.0)


def test_once_and_block_attributes_validate_and_round_trip(tmp_path) -> None:
    g = sft.Graph(
        list("abcd"),
        [("a", "b"), ("b", "c"), ("c", "d")],
        [1, 2, 3, 4],
        [1, 1, 1, 1],
        once={"c": True, "d": True},
        block=[None, 0, 0, np.int64(1)],
    )
    assert g.once.tolist() == [False, False, True, True]
    assert g.block == [None, 0, 0, 1] and g.has_blocks
    g.once[0] = True  # a copy: the graph is unchanged
    assert g.once.tolist() == [False, False, True, True]
    back = sft.Graph.from_json(json.loads(json.dumps(g.to_json(tmp_path / "g.json"))))
    assert back.once.tolist() == g.once.tolist() and back.block == g.block
    assert sft.Graph.from_json(tmp_path / "g.json").block == g.block
    moved = g.with_order(list("abcd"))
    assert moved.once.tolist() == g.once.tolist() and moved.block == g.block
    plain = chain()
    assert plain.once.tolist() == [False] * 3 and plain.block == [None] * 3 and not plain.has_blocks
    assert "once" not in plain.to_json()["nodes"][0] and "block" not in plain.to_json()["nodes"][0]


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"once": [True, "yes"]}, TypeError, r"once of node 1 must be a bool, got str 'yes'"),
        ({"once": [True]}, ValueError, r"once must have one value per node \(2\), got 1"),
        ({"block": [0, 1.5]}, TypeError, r"block of node 1 must be an int or None, got float 1.5"),
        ({"block": [0, True]}, TypeError, r"block of node 1 must be an int or None, got bool True"),
        ({"block": [-1, 0]}, ValueError, r"block of node 0 must be a non-negative int or None, got -1"),
        ({"block": 3}, TypeError, r"block must be a sequence or mapping with one value per node, got int"),
    ],
)
def test_once_and_block_validation_messages(kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        sft.Graph([0, 1], [(0, 1)], [1, 1], [1, 1], **kwargs)


def test_transformer_graph_shape_once_and_blocks() -> None:
    g = sft.graphs.transformer_graph(2, batch=2, seq=8, d_model=16, n_heads=2, vocab=11)
    assert g.n == 6 + 20 * 2
    assert g.order[0] == "embed" and g.order[-1] == "embed.backward"
    i = g.index
    # a backward node reads its users' gradients, its inputs and its output
    assert sorted(g.predecessors("h0.add_1.backward")) == sorted(
        ["h0.ln_2.backward", "h0.add_2.backward", "embed", "h0.attn.c_proj", "h0.add_1"]
    )
    assert g.memory[i("h1.mlp.c_fc")] == 4 * 2 * 8 * 16 * 4
    assert g.memory[i("h1.add_1.backward")] == 2 * 2 * 8 * 16 * 4  # gradients of both inputs
    once = {v for v, o in zip(g.nodes, g.once.tolist(), strict=True) if o}
    assert "h0.mlp.c_fc.backward" in once and "loss.backward" in once and "embed.backward" in once
    assert not once & {"h0.mlp.gelu.backward", "h1.attn.core.backward", "h1.add_2.backward", "h0.ln_1"}
    assert g.block[i("h1.ln_2.backward")] == 1 and g.block[i("loss")] is None
    assert g.backward.tolist() == [False] * 23 + [True] * 23
    with pytest.raises(ValueError, match=r"d_model must be a multiple of n_heads \(3\), got 16"):
        sft.graphs.transformer_graph(1, d_model=16, n_heads=3)
    with pytest.raises(ValueError, match=r"n_layers: expected an int >= 1, got 0"):
        sft.graphs.transformer_graph(0)
