"""Compute graphs for rematerialization planning.

A :class:`Graph` is a directed acyclic graph whose nodes carry a ``memory`` (size of the
node's output, e.g. in bytes) and a ``duration`` (cost of computing it). See docs/planner.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any, Union

import numpy as np

from sparseft._atomic import atomic_path

__all__ = ["Graph"]

PathOrDict = Union[str, "os.PathLike[str]", Mapping[str, Any]]

_MEMORY_KEYS = ("memory", "out_cost", "cost_ram")
_DURATION_KEYS = ("duration", "cost_cpu")
# the sums of memory and of duration over all nodes stay below this: a resident set never holds
# more than the sum of memory, and a schedule computing every node at most twice stays below 2**63
_TOTAL_LIMIT = 2**62


def _check_id(v: Any, what: str) -> None:
    """Raise TypeError naming ``what`` unless ``v`` can be looked up as a node id (hashable, not bool)."""
    if isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{what} must be a node id (an int or str), got bool {v!r}")
    try:
        hash(v)
    except TypeError:
        raise TypeError(
            f"{what} must be a node id (an int or str), got unhashable {type(v).__name__} {v!r}"
        ) from None


def _first_value(record: Mapping[str, Any], keys: Sequence[str]) -> Any:
    """The value of the first of ``keys`` that ``record`` has with a non-null value, else None."""
    return next((record[k] for k in keys if record.get(k) is not None), None)


def _as_count(value: Any, what: str) -> int:
    """Return ``value`` as a non-negative Python int, or raise naming ``what``."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{what} must be a non-negative integer, got bool {value!r}")
    if isinstance(value, (int, np.integer)):
        iv = int(value)
    elif isinstance(value, (float, np.floating)):
        if not np.isfinite(value) or float(value) != int(value):
            raise ValueError(f"{what} must be a non-negative integer, got {value!r}")
        iv = int(value)
    else:
        raise TypeError(f"{what} must be a non-negative integer, got {type(value).__name__} {value!r}")
    if iv < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {iv}")
    if iv >= 2**62:
        raise ValueError(f"{what} must be below 2**62, got {iv}")
    return iv


def _as_flag(value: Any, what: str) -> bool:
    """Return ``value`` as a bool (None is False), or raise TypeError naming ``what``."""
    if value is None:
        return False
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and int(value) in (0, 1):
        return bool(value)
    raise TypeError(f"{what} must be a bool, got {type(value).__name__} {value!r}")


def _as_block(value: Any, what: str) -> int | None:
    """Return ``value`` as a block index (a non-negative int) or None, or raise naming ``what``."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what} must be an int or None, got {type(value).__name__} {value!r}")
    if int(value) < 0:
        raise ValueError(f"{what} must be a non-negative int or None, got {int(value)}")
    return int(value)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (temporary file + ``os.replace``).

    Raises
    ------
    TypeError
        If ``path`` is not a str or os.PathLike of str.
    OSError
        As the file system reports it: IsADirectoryError naming ``path`` when it is a directory,
        FileNotFoundError when its directory does not exist (nothing is written in either case).
    """
    if not isinstance(path, (str, os.PathLike)) or not isinstance(os.fspath(path), str):
        raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")
    target = os.fspath(path)
    if os.path.isdir(target):
        raise IsADirectoryError(f"path: expected a file path, got the directory {target!r}")
    with atomic_path(target) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh)


class Graph:
    """A computation graph (DAG) with per-node output memory and compute duration.

    Parameters
    ----------
    nodes : sequence of int or str
        Node identifiers, unique: ints (NumPy integers are stored as Python ints) or strings,
        the ids that the node-link JSON of :meth:`to_json` / :meth:`from_json` keeps exactly.
        Other types (e.g. tuples, which JSON would turn into lists) are rejected.
    edges : iterable of (u, v) pairs
        Directed edges: ``v`` reads the output of ``u``. Duplicates are merged.
    memory : sequence or mapping of int
        Output size of every node (e.g. bytes), aligned with ``nodes`` or keyed by node. Each
        value and their sum are below 2**62: the memory resident during a schedule never exceeds
        that sum, so peaks fit in int64.
    duration : sequence or mapping of int
        Compute cost of every node, aligned with ``nodes`` or keyed by node. Each value is below
        2**62 and so is their sum (:attr:`total_duration`), so the duration of any
        schedule computing every node at most twice fits in int64 (:func:`sparseft.simulate`
        raises ValueError for a schedule whose duration would not).
    order : sequence of hashable, optional
        A topological order used by the planners for the first computation of each
        node. Defaults to a deterministic topological order (Kahn's algorithm, ties by
        the position in ``nodes``).
    labels : sequence or mapping of str, optional
        Human-readable names (e.g. layer names); default ``str(node)``.
    backward : sequence or mapping of bool, optional
        Marks backward-pass nodes (training graphs); used by the "chen" and "blocks" planners.
    once : sequence or mapping of bool, optional
        Marks nodes that every schedule computes exactly once (e.g. a backward op that
        accumulates parameter gradients: running it twice would add them twice). Every solver
        honours it, and :func:`sparseft.simulate` rejects a schedule that computes such a node
        twice. Default: no such node.
    block : sequence or mapping of int or None, optional
        The block (transformer block, MLP layer) each node belongs to; None for nodes outside
        any block (embeddings, head, loss). Used by per-block checkpointing
        (``Planner(solver="blocks")``, and as a hint of the other solvers). Default: no blocks.
    name : str, optional
        Graph name.

    Raises
    ------
    TypeError
        If an argument has the wrong type (e.g. a non-integer memory, a node id that is not
        an int or str, an unhashable node in ``edges`` or ``order``).
    ValueError
        If memory/duration are missing, negative or sum to 2**62 or more, an edge names an
        unknown node, the graph has a cycle (the message names the nodes on it), or ``order``
        is not a topological order of all nodes.

    Examples
    --------
    >>> g = Graph([0, 1, 2], [(0, 1), (1, 2)], memory=[4, 4, 4], duration=[1, 1, 1])
    >>> g.peak_memory()
    8
    """

    def __init__(
        self,
        nodes: Sequence[Hashable],
        edges: Iterable[tuple[Hashable, Hashable]],
        memory: Sequence[int] | Mapping[Any, int],
        duration: Sequence[int] | Mapping[Any, int],
        *,
        order: Sequence[Hashable] | None = None,
        labels: Sequence[str] | Mapping[Any, str] | None = None,
        backward: Sequence[bool] | Mapping[Any, bool] | None = None,
        once: Sequence[bool] | Mapping[Any, bool] | None = None,
        block: Sequence[int | None] | Mapping[Any, int | None] | None = None,
        name: str = "",
    ) -> None:
        if isinstance(nodes, (str, bytes)) or not isinstance(nodes, Iterable):
            raise TypeError(f"nodes must be a sequence of node ids, got {type(nodes).__name__}")
        node_list: list[Hashable] = []
        index: dict[Hashable, int] = {}
        for i, v in enumerate(nodes):
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer, str)):
                raise TypeError(f"nodes[{i}] must be an int or str id, got {type(v).__name__} {v!r}")
            v = int(v) if isinstance(v, (int, np.integer)) else str(v)  # plain ints/strs: JSON-exact
            node_list.append(v)
            if v in index:
                raise ValueError(f"nodes must be unique, got {v!r} twice")
            index[v] = i
        n = len(node_list)
        self._nodes = node_list
        self._index = index
        self.name = str(name)

        self._memory = self._per_node(memory, "memory", required=True)
        self._duration = self._per_node(duration, "duration", required=True)
        mem = np.array(
            [_as_count(x, f"memory of node {v!r}") for v, x in zip(node_list, self._memory, strict=True)],
            dtype=np.int64,
        )
        dur = np.array(
            [_as_count(x, f"duration of node {v!r}") for v, x in zip(node_list, self._duration, strict=True)],
            dtype=np.int64,
        )
        for what, arr in (("memory", mem), ("duration", dur)):
            total = sum(arr.tolist())  # exact: Python ints
            if total >= _TOTAL_LIMIT:
                raise ValueError(
                    f"{what} must sum to less than 2**62 over all nodes (so that schedule totals fit in "
                    f"int64), got a sum of {total}"
                )
        mem.flags.writeable = False
        dur.flags.writeable = False
        self._mem = mem
        self._dur = dur
        self._max_duration = int(dur.max()) if n else 0
        lab = self._per_node(labels, "labels", required=False)
        self._labels = [str(v) if x is None else str(x) for v, x in zip(node_list, lab, strict=True)]
        bw = self._per_node(backward, "backward", required=False)
        self._backward = np.array([bool(x) if x is not None else False for x in bw], dtype=bool)
        self._has_backward = backward is not None
        self._once = np.array(
            [
                _as_flag(x, f"once of node {v!r}")
                for v, x in zip(node_list, self._per_node(once, "once", required=False), strict=True)
            ],
            dtype=bool,
        )
        self._once.flags.writeable = False
        self._has_once = once is not None
        self._block: list[int | None] = [
            _as_block(x, f"block of node {v!r}")
            for v, x in zip(node_list, self._per_node(block, "block", required=False), strict=True)
        ]
        self._has_block = block is not None

        if isinstance(edges, (str, bytes)) or not isinstance(edges, Iterable):
            raise TypeError(
                f"edges must be an iterable of (source, target) pairs, got {type(edges).__name__}"
            )
        edge_set: dict[tuple[int, int], None] = {}
        for k, e in enumerate(edges):
            try:
                u, v = e
            except (TypeError, ValueError):
                raise TypeError(f"edges[{k}] must be a (source, target) pair, got {e!r}") from None
            _check_id(u, f"edges[{k}] source")
            _check_id(v, f"edges[{k}] target")
            if u not in index:
                raise ValueError(f"edges[{k}] = {e!r}: unknown source node {u!r}")
            if v not in index:
                raise ValueError(f"edges[{k}] = {e!r}: unknown target node {v!r}")
            edge_set[(index[u], index[v])] = None
        self._edges = list(edge_set)

        preds: list[list[int]] = [[] for _ in range(n)]
        succs: list[list[int]] = [[] for _ in range(n)]
        for u, v in self._edges:
            preds[v].append(u)
            succs[u].append(v)
        self._preds = preds
        self._succs = succs
        self.pred_ptr, self.pred_idx = _csr(preds)
        self.succ_ptr, self.succ_idx = _csr(succs)

        topo = self._kahn()
        if order is None:
            self._order = topo
        else:
            if isinstance(order, (str, bytes)) or not isinstance(order, Iterable):
                raise TypeError(f"order must be a sequence of node ids, got {type(order).__name__}")
            olist = list(order)
            if len(olist) != n:
                raise ValueError(f"order must list all {n} nodes once, got {len(olist)} entries")
            oidx = []
            for k, v in enumerate(olist):
                _check_id(v, f"order[{k}]")
                if v not in index:
                    raise ValueError(f"order names unknown node {v!r}")
                oidx.append(index[v])
            if len(set(oidx)) != n:
                raise ValueError("order must list every node exactly once, got duplicates")
            pos = np.empty(n, dtype=np.int64)
            pos[np.array(oidx, dtype=np.int64)] = np.arange(n)
            for u, v in self._edges:
                if pos[u] >= pos[v]:
                    raise ValueError(
                        f"order is not topological: edge {node_list[u]!r} -> {node_list[v]!r} "
                        f"but {node_list[v]!r} comes first"
                    )
            self._order = oidx
        self.order_idx = np.array(self._order, dtype=np.int64)
        self.order_idx.flags.writeable = False

    # ---------------------------------------------------------------- helpers
    def _per_node(self, values: Any, what: str, *, required: bool) -> list[Any]:
        n = len(self._nodes)
        if values is None:
            if required:
                raise ValueError(f"{what} is required: one value per node")
            return [None] * n
        if isinstance(values, Mapping):
            out: list[Any] = []
            for v in self._nodes:
                if v not in values:
                    if required:
                        raise ValueError(f"{what} is missing for node {v!r}")
                    out.append(None)
                else:
                    out.append(values[v])
            return out
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            raise TypeError(
                f"{what} must be a sequence or mapping with one value per node, got {type(values).__name__}"
            )
        lst = list(np.asarray(values).tolist()) if isinstance(values, np.ndarray) else list(values)
        if len(lst) != n:
            raise ValueError(f"{what} must have one value per node ({n}), got {len(lst)}")
        return lst

    def _kahn(self) -> list[int]:
        n = len(self._nodes)
        indeg = [len(p) for p in self._preds]
        import heapq

        ready = [v for v in range(n) if indeg[v] == 0]
        heapq.heapify(ready)
        out: list[int] = []
        while ready:
            v = heapq.heappop(ready)
            out.append(v)
            for s in self._succs[v]:
                indeg[s] -= 1
                if indeg[s] == 0:
                    heapq.heappush(ready, s)
        if len(out) != n:
            cycle = self._find_cycle({v for v in range(n) if indeg[v] > 0})
            names = " -> ".join(repr(self._nodes[v]) for v in cycle + cycle[:1])
            raise ValueError(f"edges must form a DAG, found a cycle: {names}")
        return out

    def _find_cycle(self, rest: set[int]) -> list[int]:
        # every node left by Kahn's algorithm has a predecessor left: walk back until a repeat
        v = min(rest)
        seen: dict[int, int] = {}
        path: list[int] = []
        while v not in seen:
            seen[v] = len(path)
            path.append(v)
            v = next(p for p in self._preds[v] if p in rest)
        return path[seen[v] :][::-1]

    # ------------------------------------------------------------ properties
    @property
    def n(self) -> int:
        """Number of nodes."""
        return len(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)

    @property
    def nodes(self) -> list[Hashable]:
        """Node ids, in construction order."""
        return list(self._nodes)

    @property
    def edges(self) -> list[tuple[Hashable, Hashable]]:
        """Edges as (source, target) node-id pairs."""
        return [(self._nodes[u], self._nodes[v]) for u, v in self._edges]

    @property
    def memory(self) -> np.ndarray:
        """Output memory per node, int64, aligned with :attr:`nodes` (read-only)."""
        return self._mem

    @property
    def duration(self) -> np.ndarray:
        """Compute duration per node, int64, aligned with :attr:`nodes` (read-only)."""
        return self._dur

    @property
    def order(self) -> list[Hashable]:
        """The topological order used for first computations."""
        return [self._nodes[i] for i in self._order]

    @property
    def backward(self) -> np.ndarray:
        """Backward-pass flag per node (all False unless given)."""
        return self._backward.copy()

    @property
    def once(self) -> np.ndarray:
        """Compute-exactly-once flag per node, aligned with :attr:`nodes` (all False unless given)."""
        return self._once.copy()

    @property
    def block(self) -> list[int | None]:
        """Block index per node (None outside any block), aligned with :attr:`nodes`."""
        return list(self._block)

    @property
    def has_blocks(self) -> bool:
        """True when some node belongs to a block (per-block checkpointing applies)."""
        return any(b is not None for b in self._block)

    @property
    def total_duration(self) -> int:
        """Sum of all node durations (the duration of a schedule without recomputation)."""
        return int(self._dur.sum())

    def index(self, node: Hashable) -> int:
        """Position of ``node`` in :attr:`nodes`."""
        if isinstance(node, (bool, np.bool_)):  # True == 1, but bools are never node ids
            raise ValueError(f"node must be a node of the graph, got {node!r}")
        try:
            return self._index[node]
        except (KeyError, TypeError):
            raise ValueError(f"node must be a node of the graph, got {node!r}") from None

    def label(self, node: Hashable) -> str:
        """Human-readable name of ``node``."""
        return self._labels[self.index(node)]

    def predecessors(self, node: Hashable) -> list[Hashable]:
        """Inputs of ``node``."""
        return [self._nodes[u] for u in self._preds[self.index(node)]]

    def successors(self, node: Hashable) -> list[Hashable]:
        """Users of ``node``."""
        return [self._nodes[u] for u in self._succs[self.index(node)]]

    def min_budget(self) -> tuple[int, Hashable]:
        """Smallest memory any schedule needs: max over nodes of output + inputs.

        Returns
        -------
        (int, node)
            The bound and a node attaining it.
        """
        best, arg = 0, self._nodes[0] if self._nodes else None
        for v in range(self.n):
            need = int(self._mem[v]) + sum(int(self._mem[u]) for u in self._preds[v])
            if need > best:
                best, arg = need, self._nodes[v]
        return best, arg

    def peak_memory(self, order: Sequence[Hashable] | None = None) -> int:
        """Peak memory of computing every node once, in ``order``, freeing eagerly.

        Each output is freed right after its last user is computed (a node without
        users right after it is computed).

        Parameters
        ----------
        order : sequence of node ids, optional
            A topological order; default :attr:`order`.

        Returns
        -------
        int
            The no-rematerialization peak.
        """
        if order is None:
            oidx = self._order
        else:
            oidx = Graph(self._nodes, self.edges, self._mem.tolist(), self._dur.tolist(), order=order)._order
        remaining = [len(s) for s in self._succs]
        cur = peak = 0
        mem = self._mem.tolist()
        for v in oidx:
            cur += mem[v]
            peak = max(peak, cur)
            for u in self._preds[v]:
                remaining[u] -= 1
                if remaining[u] == 0:
                    cur -= mem[u]
            if not self._succs[v]:
                cur -= mem[v]
        return int(peak)

    def low_memory_order(self) -> list[Hashable]:
        """A topological order with a low no-rematerialization peak (greedy; not optimal).

        Repeatedly computes, among the nodes whose inputs are all computed, the one that grows
        the resident memory least: its output (zero for a node without users) minus the
        outputs of the inputs it reads last. Ties go to the node earlier in :attr:`order`.
        The result is :attr:`order` itself when that has a peak no higher.

        Returns
        -------
        list of hashable
            Node ids in the new order; ``self.peak_memory(result) <= self.peak_memory()``.

        Examples
        --------
        >>> g = Graph([0, 1, 2, 3], [(0, 1), (2, 3)], memory=[5, 1, 5, 1], duration=[1] * 4,
        ...           order=[0, 2, 1, 3])
        >>> g.peak_memory(), g.low_memory_order(), g.peak_memory(g.low_memory_order())
        (11, [0, 1, 2, 3], 6)
        """
        n = self.n
        mem = self._mem.tolist()
        pos = [0] * n
        for p, v in enumerate(self._order):
            pos[v] = p
        indeg = [len(p) for p in self._preds]
        remaining = [len(s) for s in self._succs]
        ready = [v for v in range(n) if indeg[v] == 0]
        out: list[int] = []
        # one node per step: the ready node with the smallest growth of resident memory
        while ready:
            best_k, best_key = 0, None
            for k, v in enumerate(ready):
                grow = (mem[v] if self._succs[v] else 0) - sum(
                    mem[u] for u in self._preds[v] if remaining[u] == 1
                )
                key = (grow, pos[v])
                if best_key is None or key < best_key:
                    best_k, best_key = k, key
            v = ready[best_k]
            ready[best_k] = ready[-1]
            ready.pop()
            out.append(v)
            for u in self._preds[v]:
                remaining[u] -= 1
            for w in self._succs[v]:
                indeg[w] -= 1
                if indeg[w] == 0:
                    ready.append(w)
        cand = [self._nodes[v] for v in out]
        return cand if self.peak_memory(cand) < self.peak_memory() else self.order

    def with_order(self, order: Sequence[Hashable]) -> Graph:
        """A copy of this graph whose :attr:`order` is ``order`` (same nodes, same indices).

        Parameters
        ----------
        order : sequence of hashable
            A topological order of all nodes.

        Raises
        ------
        ValueError
            If ``order`` is not a topological order of all nodes.
        """
        return Graph(
            self._nodes,
            self.edges,
            self._mem.tolist(),
            self._dur.tolist(),
            order=order,
            labels=self._labels,
            backward=self._backward.tolist() if self._has_backward else None,
            once=self._once.tolist() if self._has_once else None,
            block=self._block if self._has_block else None,
            name=self.name,
        )

    def __repr__(self) -> str:
        nm = f" {self.name!r}" if self.name else ""
        return f"<Graph{nm} nodes={self.n} edges={len(self._edges)} total_duration={self.total_duration}>"

    # ------------------------------------------------------------------- I/O
    @classmethod
    def from_json(cls, source: PathOrDict) -> Graph:
        """Load a graph from networkx node-link JSON (a file path or a parsed dict).

        Accepted variants: node ids under ``"id"`` (networkx default) or ``"name"``;
        memory under ``memory`` | ``out_cost`` | ``cost_ram``; duration under
        ``duration`` | ``cost_cpu``; links under ``"links"`` or ``"edges"``, each with
        ``source``/``target`` or ``"0"``/``"1"``; optional ``graph.order`` (a
        topological order) and per-node ``backward`` and ``once`` flags and ``block`` indices
        (an int or null). networkx is not needed.
        The memory (duration) of a node is the value of the first of its keys, in the order
        above, that is present and not null: a null key counts as absent. Node ids must be
        ints or strings (see :class:`Graph`); a file must be UTF-8 text.

        Parameters
        ----------
        source : str, os.PathLike or dict
            Path of a JSON file, or the already-parsed JSON object.

        Returns
        -------
        Graph

        Raises
        ------
        TypeError, ValueError
            On malformed JSON structure or invalid values; the message names the field.
            A file that is not UTF-8 or not valid JSON (including nesting too deep to parse)
            gives ValueError naming the file.
        """
        if isinstance(source, (str, os.PathLike)):
            where = os.fspath(source)
            with open(source, encoding="utf-8") as fh:
                try:
                    data = json.load(fh)
                except UnicodeDecodeError as exc:
                    raise ValueError(f"source {where!r} is not UTF-8 text: {exc}") from None
                except RecursionError:
                    raise ValueError(
                        f"source {where!r} is not valid JSON: nested too deeply to parse"
                    ) from None
                except ValueError as exc:  # json.JSONDecodeError, or e.g. an integer with too many digits
                    raise ValueError(f"source {where!r} is not valid JSON: {exc}") from None
        elif isinstance(source, Mapping):
            data = source
        else:
            raise TypeError(f"source must be a file path or a dict, got {type(source).__name__}")
        if not isinstance(data, Mapping):
            raise TypeError(f"source must hold a JSON object, got {type(data).__name__}")
        nodes = data.get("nodes")
        if not isinstance(nodes, list):
            raise ValueError("source must have a 'nodes' list (networkx node-link format)")
        links = data.get("links", data.get("edges", []))
        if not isinstance(links, list):
            raise ValueError("source 'links' must be a list")
        if nodes and all(isinstance(x, Mapping) and "id" in x for x in nodes):
            key = "id"
        elif nodes and all(isinstance(x, Mapping) and "name" in x for x in nodes):
            key = "name"
        elif not nodes:
            key = "id"
        else:
            raise ValueError("every node must be an object with an 'id' (or 'name') key")
        ids, mem, dur, labels, bw, once, blk = [], [], [], [], [], [], []
        has_bw = has_once = has_blk = False
        for i, x in enumerate(nodes):
            ids.append(x[key])
            m = _first_value(x, _MEMORY_KEYS)
            d = _first_value(x, _DURATION_KEYS)
            if m is None:
                raise ValueError(
                    f"nodes[{i}] (id {x[key]!r}) has no memory: expected one of {', '.join(_MEMORY_KEYS)} "
                    f"with a non-null value"
                )
            if d is None:
                raise ValueError(
                    f"nodes[{i}] (id {x[key]!r}) has no duration: expected one of {', '.join(_DURATION_KEYS)} "
                    f"with a non-null value"
                )
            mem.append(m)
            dur.append(d)
            labels.append(str(x["name"]) if key == "id" and "name" in x else str(x[key]))
            if "backward" in x:
                has_bw = True
            bw.append(bool(x.get("backward", False)))
            has_once = has_once or "once" in x
            once.append(x.get("once", False))
            has_blk = has_blk or "block" in x
            blk.append(x.get("block"))
        edges = []
        for k, e in enumerate(links):
            if not isinstance(e, Mapping):
                raise ValueError(f"links[{k}] must be an object, got {e!r}")
            if "source" in e and "target" in e:
                edges.append((e["source"], e["target"]))
            elif "0" in e and "1" in e:
                edges.append((e["0"], e["1"]))
            else:
                raise ValueError(f"links[{k}] must have 'source'/'target' (or '0'/'1'), got keys {sorted(e)}")
        graph_attrs = data.get("graph", {}) or {}
        order = graph_attrs.get("order") if isinstance(graph_attrs, Mapping) else None
        name = graph_attrs.get("name", "") if isinstance(graph_attrs, Mapping) else ""
        return cls(
            ids,
            edges,
            mem,
            dur,
            order=order,
            labels=labels,
            backward=bw if has_bw else None,
            once=once if has_once else None,
            block=blk if has_blk else None,
            name=str(name),
        )

    def to_json(self, path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """Return the graph as networkx node-link JSON; also write it if ``path`` is given.

        The file is written atomically (temporary file, then ``os.replace``), so an
        error never leaves a truncated file behind.

        Parameters
        ----------
        path : str or os.PathLike, optional
            Where to write the JSON.

        Returns
        -------
        dict
            ``{"directed": True, "multigraph": False, "graph": {...}, "nodes": [...],
            "links": [...]}`` with node keys ``id``, ``name``, ``memory``, ``duration``
            (and ``backward``, ``once``, ``block`` when given).
        """
        nodes = []
        for i, v in enumerate(self._nodes):
            rec: dict[str, Any] = {
                "id": v,
                "name": self._labels[i],
                "memory": int(self._mem[i]),
                "duration": int(self._dur[i]),
            }
            if self._has_backward:
                rec["backward"] = bool(self._backward[i])
            if self._has_once:
                rec["once"] = bool(self._once[i])
            if self._has_block:
                rec["block"] = self._block[i]
            nodes.append(rec)
        out = {
            "directed": True,
            "multigraph": False,
            "graph": {"name": self.name, "order": self.order},
            "nodes": nodes,
            "links": [{"source": u, "target": v} for u, v in self.edges],
        }
        if path is not None:
            atomic_write_json(path, out)
        return out


def _csr(adj: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    ptr = np.zeros(len(adj) + 1, dtype=np.int64)
    ptr[1:] = np.cumsum([len(a) for a in adj]) if adj else []
    idx = np.array([x for a in adj for x in a], dtype=np.int64)
    ptr.flags.writeable = False
    idx.flags.writeable = False
    return ptr, idx
