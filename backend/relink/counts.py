"""The one blocked pass of backend.relink: for every query image, how many eligible distractor reports
beat or tie its true report (random and pathology-matched pools, study and patient level).

Memory is O(block x n_candidates): a block of query rows against every candidate (torch matmul, float32, on
the chosen device), then counts by comparisons against the row's threshold. Which distractors are eligible
and which tie by text is settled on a small gathered set per row (the patient's own studies and the text
twins of the anchor report), so no n x n mask is ever built. Candidates are kept sorted by label group, so a
row's pathology-matched distractors are one contiguous column range.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np
import torch

from backend.errors import RelinkError
from backend.progress import ProgressLike

log = logging.getLogger(__name__)

DEFAULT_BLOCK_ELEMENTS = 1 << 24  # similarities per block on the CPU (64 MB of float32)
CUDA_BLOCK_ELEMENTS = 1 << 28  # on a GPU (1 GB of float32 + 0.5 GB of masks): few, large launches
COUNT_CHUNK_ELEMENTS = 1 << 18  # similarities per chunk of the CPU comparisons (1 MB of float32: stays in cache)
CPU_LANES = 2  # blocks counted at once on the CPU (cpu_lanes)
MIN_LANE_ROWS = 256  # query rows a lane's block needs for its matmul to be worth the candidates it streams
_LANES_LOCK = threading.Lock()
NUMPY_ON_CPU = True  # count CPU blocks with numpy (faster); False runs the torch code path that GPUs use
COUNT_DTYPES: dict[str, type] = {"score": np.float32, **{key: np.int64 for key in
                                  ("b", "t", "bh", "th", "pb", "pt", "pbh", "pth")}}  # what count_block returns
_LOW_BITS = np.array([(1 << q) - 1 for q in range(64)], dtype=np.uint64)  # the q lowest bits of a word


@dataclass
class Candidates:
    """Unique studies (the candidate reports), sorted by label group.

    emb (m, d) float32 L2-normalised; patient, text, label (m,) int64 group ids; label is non-decreasing,
    so label group g occupies columns [lab_start[g], lab_end[g]). pat_ptr/pat_idx and txt_ptr/txt_idx are
    CSR lists of the candidates of each patient and of each text group (text groups of size 1 left empty).
    """

    emb: np.ndarray
    patient: np.ndarray
    text: np.ndarray
    label: np.ndarray
    lab_start: np.ndarray
    lab_end: np.ndarray
    pat_ptr: np.ndarray
    pat_idx: np.ndarray
    txt_ptr: np.ndarray
    txt_idx: np.ndarray

    @property
    def m(self) -> int:
        return int(self.patient.shape[0])  # emb is emptied once counted (backend.relink.relink_curves)


def _csr(groups: np.ndarray, n_groups: int, min_size: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """CSR (ptr (G+1,), idx) listing the positions of each group id; groups smaller than min_size are empty."""
    sizes = np.bincount(groups, minlength=n_groups)
    keep = sizes[groups] >= min_size
    order = np.argsort(groups, kind="stable")
    order = order[keep[order]]
    ptr = np.zeros(n_groups + 1, dtype=np.int64)
    np.cumsum(np.where(sizes >= min_size, sizes, 0), out=ptr[1:])
    return ptr, order.astype(np.int64)


def build_candidates(emb: np.ndarray, patient: np.ndarray, text: np.ndarray, label: np.ndarray) -> Candidates:
    """Index candidates already sorted by label group: emb (m, d) float32 L2-normalised (kept, not copied);
    patient, text, label (m,) dense int group ids with label non-decreasing."""
    if (np.diff(label) < 0).any():
        raise RelinkError("internal: build_candidates needs candidates sorted by label group")
    n_lab = int(label.max()) + 1
    lab_start = np.searchsorted(label, np.arange(n_lab), side="left")
    lab_end = np.searchsorted(label, np.arange(n_lab), side="right")
    pat_ptr, pat_idx = _csr(patient, int(patient.max()) + 1)
    txt_ptr, txt_idx = _csr(text, int(text.max()) + 1, min_size=2)
    return Candidates(np.ascontiguousarray(emb, dtype=np.float32), patient, text, label,
                      lab_start, lab_end, pat_ptr, pat_idx, txt_ptr, txt_idx)


def _take(ptr: np.ndarray, idx: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ragged gather: for row r the members idx[ptr[groups[r]]:ptr[groups[r]+1]] -> (rows (E,), members (E,))."""
    starts = ptr[groups]
    lens = ptr[groups + 1] - starts
    rows = np.repeat(np.arange(groups.shape[0]), lens)
    offs = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
    return rows, idx[np.repeat(starts, lens) + offs]


@dataclass
class _Gather:
    """Per-row special candidates: the patient's studies (in_p) and the anchor's text twins of other patients."""

    rows: np.ndarray
    cols: np.ndarray
    in_p: np.ndarray


def _gather(cands: Candidates, patient: np.ndarray, anchor_text: np.ndarray) -> _Gather:
    p_rows, p_cols = _take(cands.pat_ptr, cands.pat_idx, patient)
    t_rows, t_cols = _take(cands.txt_ptr, cands.txt_idx, anchor_text)
    other = cands.patient[t_cols] != patient[t_rows]  # own studies are already in the patient part
    rows = np.concatenate([p_rows, t_rows[other]])
    cols = np.concatenate([p_cols, t_cols[other]])
    in_p = np.concatenate([np.ones(p_rows.size, bool), np.zeros(int(other.sum()), bool)])
    return _Gather(rows, cols, in_p)


def _runs(values: np.ndarray) -> list[tuple[int, int, int]]:
    """Maximal runs of equal values: [(start, stop, value)]."""
    cut = np.flatnonzero(np.diff(values)) + 1
    starts = np.concatenate([[0], cut])
    stops = np.concatenate([cut, [values.size]])
    return [(int(a), int(b), int(values[a])) for a, b in zip(starts, stops, strict=True)]


def _row_counts(sim: torch.Tensor, thr: torch.Tensor, row_label: np.ndarray, cands: Candidates) -> np.ndarray:
    """(4, B) int64: per row, candidates scoring > thr and == thr, over all columns and over the row's label group.

    On CPU the comparisons run in numpy on a zero-copy view (several times faster than torch's bool reductions), in
    cache-sized row chunks, counted from packed bits (one thread: a second one gained nothing while torch's OpenMP
    workers spin after each matmul; count_all's lanes overlap them with the matmul instead)."""
    if sim.device.type == "cpu" and NUMPY_ON_CPU:
        out = np.zeros((4, sim.shape[0]), dtype=np.int64)
        _numpy_counts(sim.numpy(), thr.numpy(), row_label, cands, out)
        return out
    # on the GPU every count stays there until one transfer at the end (no sync per label group)
    gt, eq = sim > thr[:, None], sim == thr[:, None]
    dev_out = torch.zeros((4, sim.shape[0]), dtype=torch.int64, device=sim.device)
    dev_out[0], dev_out[1] = gt.sum(1), eq.sum(1)
    for a, b, g in _runs(row_label):
        lo, hi = int(cands.lab_start[g]), int(cands.lab_end[g])
        dev_out[2, a:b], dev_out[3, a:b] = gt[a:b, lo:hi].sum(1), eq[a:b, lo:hi].sum(1)
    return dev_out.cpu().numpy()


def _row_counts_and_moved(sim: torch.Tensor, thr: torch.Tensor, row_label: np.ndarray, cands: Candidates,
                          moved: np.ndarray, moved_thr: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """_row_counts for every row, and (4, M) the same counts for rows `moved` (M,) (increasing) against thresholds
    moved_thr (M,) (the patient level's best reports); on the CPU in the same pass, while each chunk is in cache."""
    if sim.device.type == "cpu" and NUMPY_ON_CPU:
        out, out_moved = np.zeros((4, sim.shape[0]), dtype=np.int64), np.zeros((4, moved.shape[0]), dtype=np.int64)
        _numpy_counts(sim.numpy(), thr.numpy(), row_label, cands, out, (moved, moved_thr.numpy(), out_moved))
        return out, out_moved
    if moved.size == 0:
        return _row_counts(sim, thr, row_label, cands), np.zeros((4, 0), dtype=np.int64)
    sub = torch.as_tensor(moved, device=sim.device)
    return _row_counts(sim, thr, row_label, cands), _row_counts(sim[sub], moved_thr, row_label[moved], cands)


def _numpy_counts(s: np.ndarray, t: np.ndarray, row_label: np.ndarray, cands: Candidates, out: np.ndarray,
                  extra: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> None:
    """_row_counts' CPU work for rows s (R, m) with thresholds t (R,), written into out (4, R): in row chunks of
    about COUNT_CHUNK_ELEMENTS similarities, so that both comparisons read the chunk from the cache instead of
    streaming the whole block from memory once per pass. extra = (rows (M,) increasing, thresholds (M,),
    out (4, M)): those rows counted again against their own thresholds, from the same chunk and in the same
    packed counting call as the chunk's own rows."""
    n, m = s.shape
    rows = max(1, COUNT_CHUNK_ELEMENTS // max(m, 1))
    width = (m // 64 + 1) * 64  # whole uint64 words of bits per row, one bit past column m; padding stays False
    lo_all, hi_all = cands.lab_start[row_label], cands.lab_end[row_label]
    cap = min(rows, n)
    # a chunk's rows, then its moved rows (at most one per chunk row: they are rows of the chunk)
    masks = np.zeros((2, 2 * cap if extra is not None else cap, width), dtype=np.bool_)
    picked = np.empty((cap, m), dtype=s.dtype) if extra is not None else None
    moved, moved_thr, moved_out = extra if extra is not None else (None, None, None)
    for c in range(0, n, rows):
        d = min(c + rows, n)
        r, k = d - c, 0
        _compare(s[c:d], t[c:d], masks[:, :r, :m])
        lo, hi = lo_all[c:d], hi_all[c:d]
        if moved is not None:
            i, j = np.searchsorted(moved, [c, d])
            k = int(j - i)
            if k:
                sel = moved[i:j]
                _compare(np.take(s, sel, axis=0, out=picked[:k]), moved_thr[i:j], masks[:, r:r + k, :m])
                lo, hi = np.concatenate([lo, lo_all[sel]]), np.concatenate([hi, hi_all[sel]])
        counts = _mask_counts(masks[:, :r + k], lo, hi)
        out[:, c:d] = counts[:, :r]
        if k:
            moved_out[:, i:j] = counts[:, r:]


def _compare(x: np.ndarray, t: np.ndarray, masks: np.ndarray) -> None:
    """masks (2, r, m) <- (x > t, x == t) row by row, for x (r, m) and thresholds t (r,)."""
    np.greater(x, t[:, None], out=masks[0])
    np.equal(x, t[:, None], out=masks[1])


def _mask_counts(masks: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(4, r) True entries per row of masks (2, r, w) (w a multiple of 64, above every hi): over the whole row
    (rows 0-1) and over columns [lo, hi) (rows 2-3; lo, hi (r,)). Both masks are packed to bits in one call and
    counted per uint64 word; a range is the difference of two prefix counts (the words before the prefix's end,
    from a cumulative sum, plus the low bits of its end word), so no loop runs over label groups."""
    words = np.packbits(masks, axis=2, bitorder="little").view("<u8")  # column j: bit j % 64 of word j // 64
    cum = np.zeros((*words.shape[:2], words.shape[2] + 1), dtype=np.int64)
    np.cumsum(np.bitwise_count(words), axis=2, dtype=np.int64, out=cum[:, :, 1:])
    rows = np.arange(words.shape[1])

    def prefix(p: np.ndarray) -> np.ndarray:  # (2, r): True entries in columns [0, p) of each row
        w = p // 64
        return cum[:, rows, w] + np.bitwise_count(words[:, rows, w] & _LOW_BITS[p % 64])

    return np.concatenate([cum[:, :, -1], prefix(hi) - prefix(lo)])


def _corrections(vals: torch.Tensor, thr: torch.Tensor, g: _Gather, in_x: np.ndarray, in_t: np.ndarray,
                 in_l: np.ndarray, n_rows: int) -> np.ndarray:
    """(4, B) corrections turning row counts into beaters/ties among eligible distractors (all, label group).

    Outside the gathered set a candidate is eligible and not a text twin, so it counts as scored; inside it,
    excluded ones (in_x) are removed and text twins (in_t) move from beaters to ties."""
    dev = vals.device
    rows = torch.as_tensor(g.rows, device=dev)
    x, t, lab = (torch.as_tensor(a, device=dev) for a in (in_x, in_t, in_l))
    gt = vals > thr[rows]
    eq = vals == thr[rows]
    drop_b = (gt & (x | t)).to(torch.int64)
    add_t = (~x & (t | eq)).to(torch.int64) - eq.to(torch.int64)
    out = torch.zeros((4, n_rows), dtype=torch.int64, device=dev)
    for i, w in enumerate((drop_b, add_t, drop_b * lab, add_t * lab)):
        out[i].index_add_(0, rows, w)
    return out.cpu().numpy()


def _anchor_counts(sim: torch.Tensor, thr: torch.Tensor, cands: Candidates, patient: np.ndarray,
                   anchor_text: np.ndarray, row_label: np.ndarray, in_x_of: Callable[[_Gather], np.ndarray],
                   base: np.ndarray | None = None,
                   g: _Gather | None = None, row_of: np.ndarray | None = None) -> np.ndarray:
    """(4, B) beaters, ties, beaters in label group, ties in label group for threshold thr (B,).

    in_x_of(gather) -> (E,) bool marks the gathered candidates excluded from the distractors. row_of (B,): the
    rows of sim that the B rows are (default: all rows of sim, in order); base must then be given."""
    g = g if g is not None else _gather(cands, patient, anchor_text)
    base = base if base is not None else _row_counts(sim, thr, row_label, cands)
    sim_rows = g.rows if row_of is None else row_of[g.rows]
    vals = sim[torch.as_tensor(sim_rows, device=sim.device), torch.as_tensor(g.cols, device=sim.device)]
    in_t = cands.text[g.cols] == anchor_text[g.rows]
    in_l = cands.label[g.cols] == row_label[g.rows]
    corr = _corrections(vals, thr, g, in_x_of(g), in_t, in_l, thr.shape[0])
    return np.stack([base[0] - corr[0], base[1] + corr[1], base[2] - corr[2], base[3] + corr[3]])


def _best_anchor(sim: torch.Tensor, thr: np.ndarray, g: _Gather) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The patient's best-scoring study per row (the true one whenever it shares the best score).

    Returns (rows whose best beats the true report (R,), their best score (R,) float32, their best column (R,))."""
    rows, cols = g.rows[g.in_p], g.cols[g.in_p]
    vals = sim[torch.as_tensor(rows, device=sim.device), torch.as_tensor(cols, device=sim.device)].cpu().numpy()
    best = np.full(thr.shape[0], -np.inf, dtype=np.float32)
    np.maximum.at(best, rows, vals)
    moved = np.flatnonzero(best > thr)
    hit = np.flatnonzero(vals == best[rows])
    hit_rows, first = np.unique(rows[hit], return_index=True)  # first best column of every row
    anchor = np.empty(thr.shape[0], dtype=np.int64)
    anchor[hit_rows] = cols[hit[first]]
    return moved, best[moved], anchor[moved]


def count_block(q_emb: torch.Tensor, c_emb: torch.Tensor, true: np.ndarray, cands: Candidates,
                include_same_patient: bool, out: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """Counts for one block of queries q_emb (B, d) whose true candidates are `true` (B,), rows sorted by label.

    out: a (>= B, m) float32 buffer on c_emb's device for the similarities (count_all passes one for all blocks:
    a fresh 64 MB block on the CPU is a fresh mapping whose page faults cost about a quarter of its matmul).
    Returns arrays (B,): score, b/t (study, random), bh/th (study, hard), pb/pt, pbh/pth (patient level)."""
    sim = q_emb @ c_emb.T if out is None else torch.mm(q_emb, c_emb.T, out=out[:q_emb.shape[0]])
    thr = sim[torch.arange(sim.shape[0], device=sim.device), torch.as_tensor(true, device=sim.device)]
    patient, text, label = cands.patient[true], cands.text[true], cands.label[true]
    g = _gather(cands, patient, text)
    thr_np = thr.cpu().numpy()
    # rows whose patient has a report scoring above the true one: the patient level counts against that report,
    # in the same pass over the similarities as every row's own counts
    moved, best, anchor = _best_anchor(sim, thr_np, g)
    best_t = torch.as_tensor(best, device=sim.device)
    base, moved_base = _row_counts_and_moved(sim, thr, label, cands, moved, best_t)
    in_p = lambda gg: gg.in_p  # noqa: E731 - the patient's studies are excluded
    own = (lambda gg: gg.cols == true[gg.rows]) if include_same_patient else in_p
    study = _anchor_counts(sim, thr, cands, patient, text, label, own, base, g)
    pat = _anchor_counts(sim, thr, cands, patient, text, label, in_p, base, g) if include_same_patient else study.copy()
    if moved.size:
        pat[:, moved] = _anchor_counts(sim, best_t, cands, patient[moved], cands.text[anchor], label[moved], in_p,
                                       base=moved_base, row_of=moved)
    return {"score": thr_np, "b": study[0], "t": study[1], "bh": study[2], "th": study[3],
            "pb": pat[0], "pt": pat[1], "pbh": pat[2], "pth": pat[3]}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The given device, else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_lanes(n_candidates: int, block_size: int | None) -> int:
    """Blocks counted at once on the CPU: CPU_LANES (each on one core: its matmul on one torch thread, then its
    comparisons, so one lane's comparisons overlap the other's matmul instead of leaving a core to spin), when
    each lane's share of a block still has MIN_LANE_ROWS query rows (a matmul of fewer rows streams all the
    candidates for little work: at 400,000 candidates one lane keeps the whole block). At most one per core."""
    lanes = max(1, min(CPU_LANES, os.cpu_count() or 1))
    rows = int(block_size) if block_size else DEFAULT_BLOCK_ELEMENTS // lanes // max(n_candidates, 1)
    return lanes if rows >= MIN_LANE_ROWS or block_size else 1


def count_all(q_emb: np.ndarray, true: np.ndarray, cands: Candidates, *, include_same_patient: bool,
              block_size: int | None, device: str | torch.device | None,
              progress: ProgressLike | None) -> dict[str, np.ndarray]:
    """Run count_block over all queries q_emb (n_q, d) with true candidates `true` (n_q,), in label order.

    On the CPU, cpu_lanes() blocks at once, each on a thread with one torch thread (the same bits: a row's
    similarities do not depend on the block or the thread count, tests/test_relink.py); the lanes share the
    memory of one block (each block is 1/lanes of DEFAULT_BLOCK_ELEMENTS). Progress is reported from the
    calling thread. Returns the arrays of count_block, each (n_q,), in the original query order."""
    dev = resolve_device(device)
    n_q = q_emb.shape[0]
    if n_q == 0:  # a torchrun rank with no queries of its own
        return {key: np.empty(0, dtype=dtype) for key, dtype in COUNT_DTYPES.items()}
    lanes = cpu_lanes(cands.m, block_size) if dev.type == "cpu" else 1
    per_block = CUDA_BLOCK_ELEMENTS if dev.type == "cuda" else DEFAULT_BLOCK_ELEMENTS // lanes
    block = int(block_size) if block_size else max(1, min(n_q, per_block // max(cands.m, 1)))
    order = np.argsort(cands.label[true], kind="stable")
    c_emb = torch.from_numpy(cands.emb).to(dev)
    out: dict[str, np.ndarray] = {}
    # one similarity buffer per lane, reused by every block of that lane
    bufs = [torch.empty((min(block, n_q), cands.m), dtype=torch.float32, device=dev) for _ in range(lanes)]

    def work(start: int, buf: torch.Tensor) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if lanes > 1:
            torch.set_num_threads(1)  # this thread's matmul on one core (OpenMP settings are per thread)
        with torch.inference_mode():
            idx = order[start:start + block]
            q = torch.from_numpy(np.ascontiguousarray(q_emb[idx], dtype=np.float32)).to(dev)
            return idx, count_block(q, c_emb, true[idx], cands, include_same_patient, out=buf)

    def stored(result: tuple[np.ndarray, dict[str, np.ndarray]]) -> None:
        nonlocal done
        idx, res = result
        for key, val in res.items():
            if key not in out:
                out[key] = np.empty(n_q, dtype=val.dtype)
            out[key][idx] = val
        done += int(idx.shape[0])
        if progress is not None:
            progress(done, n_q, "relink: scoring candidates")

    log.debug("relink counts: %d queries x %d candidates, block %d, %d lane(s), device %s", n_q, cands.m, block,
              lanes, dev)
    done = 0
    if lanes == 1:  # in this thread, as the GPU and the 400k check always run
        for start in range(0, n_q, block):
            stored(work(start, bufs[0]))
        return out
    with _LANES_LOCK, ThreadPoolExecutor(lanes) as pool:  # one lane-mode count at a time per process: the thread
        threads = torch.get_num_threads()  # count read here is the caller's, never another count's lanes' 1
        pending: deque = deque()
        try:
            for i, start in enumerate(range(0, n_q, block)):
                if len(pending) == lanes:  # the oldest block's lane (and buffer) is free once it is stored
                    stored(pending.popleft().result())
                pending.append(pool.submit(work, start, bufs[i % lanes]))
            while pending:
                stored(pending.popleft().result())
        finally:
            for fut in pending:
                fut.cancel()
            wait(pending)  # no lane still running when the thread count is restored
            torch.set_num_threads(threads)  # the lanes' setting is process-wide for MKL: restored for the caller
    return out
