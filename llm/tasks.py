"""Building the tasks of an experiment from conversations: speakers ranked by size, samples with their 20
candidates, disjoint splits and the negatives (the rules are in :mod:`llm.data`'s docstring)."""

from __future__ import annotations

import zlib

import numpy as np

from .config import N_CANDIDATES, CandidateError, Config, LLMError
from .data import Conversation, Sample, Task, TaskSet

__all__ = ["build_tasks"]


def _task_rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])


class _Pool:
    """All turns of all conversations, for drawing negatives from other conversations."""

    def __init__(self, conversations: list[Conversation]):
        texts, conv = [], []
        for i, c in enumerate(conversations):
            for t in c.turns:
                texts.append(t.text)
                conv.append(i)
        self.texts = texts
        self.conv = np.asarray(conv, dtype=np.int64)

    def draw(self, rng: np.random.Generator, k: int, convs: set[int], exclude: set[str], task: str) -> list[str]:
        """``k`` distinct texts of conversations not in ``convs``, none in ``exclude``.

        Raises :class:`CandidateError` when fewer than ``k`` such texts exist.
        """
        out: list[str] = []
        seen = set(exclude)
        n = len(self.texts)
        for _ in range(20):
            for i in rng.integers(0, n, size=3 * k):
                if int(self.conv[i]) not in convs and self.texts[i] not in seen:
                    seen.add(self.texts[i])
                    out.append(self.texts[i])
                    if len(out) == k:
                        return out
        # Rejection sampling failed: the pool is small. Choose exactly among what is available, or refuse.
        avail = sorted({t for t, c in zip(self.texts, self.conv) if int(c) not in convs} - seen)
        if len(avail) < k - len(out):
            raise CandidateError(
                f"task {task!r}: only {len(out) + len(avail) + 1} distinct candidates available, "
                f"{N_CANDIDATES} are needed (1 true reply + {N_CANDIDATES - 1} from other conversations)")
        pick = rng.choice(len(avail), size=k - len(out), replace=False)
        return out + [avail[i] for i in sorted(pick)]


def _make_sample(rng, pool: _Pool, task_pool: list[str] | None, conversations, ci: int, ti: int,
                 context_turns: int, task: str) -> Sample:
    conv = conversations[ci]
    true = conv.turns[ti].text
    context = " ".join(t.text for t in conv.turns[max(0, ti - context_turns):ti])
    negatives: list[str] = []
    if conv.turns[ti].candidates is not None:
        negatives = [c for c in conv.turns[ti].candidates if c != true][:N_CANDIDATES - 1]
    elif task_pool is not None:
        choices = [t for t in task_pool if t != true]
        negatives = [choices[i] for i in rng.choice(len(choices), size=N_CANDIDATES - 1, replace=False)]
    if len(negatives) < N_CANDIDATES - 1:
        negatives += pool.draw(rng, N_CANDIDATES - 1 - len(negatives), {ci}, {true, *negatives}, task)
    cands = [true] + negatives
    order = rng.permutation(N_CANDIDATES)
    shuffled = tuple(cands[j] for j in order)
    return Sample(context, shuffled, int(np.flatnonzero(order == 0)[0]), conv.id)


def _replies(conversations: list[Conversation]) -> dict[str, list[tuple[int, int]]]:
    """Speaker -> (conversation index, turn index) of each of its replies (a turn answering another speaker)."""
    replies: dict[str, list[tuple[int, int]]] = {}
    for ci, conv in enumerate(conversations):
        for ti in range(1, len(conv.turns)):
            s = conv.turns[ti].speaker
            if s is not None and conv.turns[ti - 1].speaker != s:
                replies.setdefault(s, []).append((ci, ti))
    return replies


def _build_task(name: str, replies: list[tuple[int, int]], conversations, pool: _Pool, cfg: Config,
                caps: dict[str, int]) -> Task:
    """Samples of one speaker: conversations in a seeded order fill ``heldout``, then ``validation``, then
    ``train`` (each conversation goes to one split), at most ``cfg.per_conversation`` samples each."""
    rng = _task_rng(cfg.data_seed, name)
    by_conv: dict[int, list[int]] = {}
    for ci, ti in replies:
        by_conv.setdefault(ci, []).append(ti)
    conv_ids = sorted(by_conv)
    pools: dict[str, list[str] | None] = {s: None for s in ("heldout", "validation", "train")}
    if cfg.negative_pool > 0 and conversations[conv_ids[0]].turns[by_conv[conv_ids[0]][0]].candidates is None:
        # One pool per split, disjoint: training must never see the negatives of the items it is judged on (it
        # could learn to reject those texts instead of learning the task).
        drawn = pool.draw(rng, 3 * cfg.negative_pool, set(conv_ids), set(), name)
        for i, s in enumerate(pools):
            pools[s] = drawn[i * cfg.negative_pool:(i + 1) * cfg.negative_pool]
    out: dict[str, list[Sample]] = {s: [] for s in ("heldout", "validation", "train")}
    for j in rng.permutation(len(conv_ids)):
        target = next((s for s in out if len(out[s]) < caps[s]), None)
        if target is None:
            break
        ci = conv_ids[j]
        tis = by_conv[ci]
        if len(tis) > cfg.per_conversation:
            tis = sorted(rng.choice(tis, size=cfg.per_conversation, replace=False).tolist())
        for ti in tis[:caps[target] - len(out[target])]:
            out[target].append(_make_sample(rng, pool, pools[target], conversations, ci, ti, cfg.context_turns,
                                            name))
    short = [s for s in out if caps[s] > 0 and not out[s]]
    if short:
        raise LLMError(f"task {name!r} has no {' and no '.join(short)} samples (its replies lie in "
                       f"{len(conv_ids)} conversation(s); each split needs conversations of its own)")
    return Task(name, tuple(out["train"]), tuple(out["heldout"]), tuple(out["validation"]))


def build_tasks(conversations: list[Conversation], cfg: Config, source: str = "chitchat") -> TaskSet:
    """Split speakers into ``T`` retraining and ``T'`` test tasks by size and build their samples.

    The size of a speaker is the number of its replies (turns answering another speaker, with a non-empty
    context). Ties are broken by name, so the choice is deterministic. Retraining tasks get ``train`` and
    ``validation`` splits, test tasks ``train``, ``validation`` and ``heldout``.

    Parameters
    ----------
    conversations : list of Conversation
        From :func:`llm.data.read_chitchat` or :func:`llm.data.read_convai2`.
    cfg : Config
        Numbers of tasks, split caps, ``per_conversation``, ``context_turns``, ``negative_pool`` and
        ``data_seed``.
    source : str
        Recorded as :attr:`TaskSet.source`.

    Returns
    -------
    TaskSet
        ``cfg.n_retrain_tasks`` retraining tasks (the largest speakers) and ``cfg.n_test_tasks`` test tasks (the
        next largest), each sample with ``C = 20`` distinct candidates.

    Raises
    ------
    LLMError
        When there are too few speakers or a split of a task would be empty.
    CandidateError
        When fewer than 20 distinct candidates can be found for a sample.
    """
    replies = _replies(conversations)
    need = cfg.n_retrain_tasks + cfg.n_test_tasks
    ranked = sorted(replies, key=lambda s: (-len(replies[s]), s))
    if len(ranked) < need:
        raise LLMError(f"{source}: {len(ranked)} speakers with replies, but n_retrain_tasks + n_test_tasks = {need}")
    pool = _Pool(conversations)
    retrain_caps = {"heldout": 0, "validation": cfg.validation_samples, "train": cfg.retrain_samples}
    test_caps = {"heldout": cfg.heldout_samples, "validation": cfg.validation_samples,
                 "train": cfg.test_train_samples}
    retrain = tuple(_build_task(s, replies[s], conversations, pool, cfg, retrain_caps)
                    for s in ranked[:cfg.n_retrain_tasks])
    test = tuple(_build_task(s, replies[s], conversations, pool, cfg, test_caps)
                 for s in ranked[cfg.n_retrain_tasks:need])
    return TaskSet(retrain, test, source)
