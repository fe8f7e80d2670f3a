import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from leanstack.errors import LeanstackError
from leanstack.leankv.pages import FREE, PagePool, PoolExhausted


def check_invariants(pool: PagePool) -> None:
    owned = pool.owner != FREE
    assert pool.num_allocated + pool.num_free == pool.num_pages
    assert bool(((pool.slot == FREE) == ~owned).all())
    # the free stack holds exactly the free pages, each once
    stack = pool.free_stack[:pool.num_free]
    assert sorted(stack.tolist()) == torch.nonzero(~owned).squeeze(1).tolist()
    # no page owned twice: each (table, slot) pair appears once and slots run 0..n-1
    pairs = torch.stack([pool.owner[owned], pool.slot[owned]], 1)
    assert torch.unique(pairs, dim=0).shape[0] == pairs.shape[0]
    for t in torch.unique(pool.owner[owned]).tolist():
        slots = sorted(pool.slot[pool.owner == t].tolist())
        assert slots == list(range(len(slots)))
    check_index(pool)


def check_index(pool: PagePool) -> None:
    """The per-table index says exactly what owner/slot say, and its padding is FREE."""
    rows, cols = pool.table_pages.shape
    assert pool.table_len.numel() == rows
    filled = torch.arange(cols).unsqueeze(0) < pool.table_len.unsqueeze(1)
    assert bool((pool.table_pages[~filled] == FREE).all())
    table = torch.arange(rows).unsqueeze(1).expand(rows, cols)[filled]
    slot = torch.arange(cols).unsqueeze(0).expand(rows, cols)[filled]
    pages = pool.table_pages[filled].long()
    assert pool.owner[pages].tolist() == table.tolist()
    assert pool.slot[pages].tolist() == slot.tolist()
    assert pages.numel() == pool.num_allocated  # every owned page is indexed


ops = st.lists(
    st.one_of(
        # table ids up to 40 arrive beyond the index's current shape and force it to grow
        st.tuples(st.just("alloc"), st.lists(st.tuples(st.integers(0, 40), st.integers(0, 4)),
                                             max_size=5, unique_by=lambda x: x[0])),
        st.tuples(st.just("free"), st.lists(st.integers(0, 45), max_size=3)),
        st.tuples(st.just("compact"), st.just(None)),
        st.tuples(st.just("grow"), st.integers(0, 12)),
    ),
    max_size=25,
)


@settings(max_examples=80, deadline=None)
@given(ops=ops)
def test_pool_invariants_under_random_operations(ops):
    pool = PagePool(24, 8)
    model: dict[int, list[int]] = {}  # table -> page ids in slot order (a reference free list)
    content: dict[int, list[bytes]] = {}
    stamp = 0
    for op, arg in ops:
        if op == "alloc":
            tables = torch.tensor([t for t, _ in arg], dtype=torch.int64)
            counts = torch.tensor([c for _, c in arg], dtype=torch.int64)
            want = int(counts.sum())
            if want > pool.num_free:
                with pytest.raises(PoolExhausted):
                    pool.allocate(tables, counts)
                continue
            ids = pool.allocate(tables, counts).tolist()
            i = 0
            for t, c in arg:
                for pid in ids[i:i + c]:
                    stamp += 1
                    pool.data[pid] = stamp % 256
                    model.setdefault(t, []).append(pid)
                    content.setdefault(t, []).append(bytes([stamp % 256] * 8))
                i += c
        elif op == "free":
            freed = pool.free(torch.tensor(arg, dtype=torch.int64))
            assert freed == sum(len(model.pop(t, [])) for t in set(arg))
            for t in set(arg):
                content.pop(t, None)
        elif op == "grow":
            pool.grow(pool.num_pages + arg)
        else:
            mapping = pool.compact()
            assert pool.is_compact()
            model = {t: [int(mapping[p]) for p in ps] for t, ps in model.items()}
        check_invariants(pool)
        tables = torch.tensor(sorted(model), dtype=torch.int64)
        assert pool.page_counts(tables).tolist() == [len(model[t]) for t in sorted(model)]
        pages, counts = pool.pages_of(tables)
        assert counts.tolist() == [len(model[t]) for t in sorted(model)]
        assert pages.tolist() == [p for t in sorted(model) for p in model[t]]
        # contents follow their pages through compaction
        assert [bytes(pool.data[p].tolist()) for p in pages.tolist()] == [
            b for t in sorted(model) for b in content[t]]


def test_allocate_is_batched_and_appends_slots():
    pool = PagePool(10, 4)
    first = pool.allocate(torch.tensor([5, 2]), torch.tensor([2, 3]))
    assert first.tolist() == [0, 1, 2, 3, 4]
    pool.allocate(torch.tensor([2]), torch.tensor([1]))
    pages, counts = pool.pages_of(torch.tensor([2, 5, 9]))
    assert counts.tolist() == [4, 2, 0]
    assert pool.slot[pages[:4]].tolist() == [0, 1, 2, 3]


def test_compaction_makes_free_space_contiguous_and_keeps_contents():
    pool = PagePool(8, 2)
    pool.allocate(torch.tensor([0, 1, 2]), torch.tensor([2, 2, 2]))
    pool.data[:6] = torch.arange(6, dtype=torch.uint8).unsqueeze(1)
    pool.free(torch.tensor([0]))
    assert not pool.is_compact()
    pool.compact()
    assert pool.is_compact()
    pages, _ = pool.pages_of(torch.tensor([1, 2]))
    assert pool.data[pages, 0].tolist() == [2, 3, 4, 5]


def test_exhaustion_and_grow():
    pool = PagePool(2, 4)
    with pytest.raises(PoolExhausted, match="exhausted"):
        pool.allocate(torch.tensor([0]), torch.tensor([3]))
    assert pool.num_free == 2  # a failed allocation takes nothing
    pool.allocate(torch.tensor([1]), torch.tensor([1]))
    pool.grow(5)
    assert pool.free_stack.numel() == 5
    pool.free(torch.tensor([1]))
    assert pool.allocate(torch.tensor([0]), torch.tensor([3])).numel() == 3
    # index: 2 tables x 4 slots (the minimum) + 2 lengths, int32; owner + slot of 3 pages
    assert pool.table_bytes() == (2 * 4 + 2) * 4 + 3 * 8
    check_invariants(pool)


def test_index_narrows_after_a_burst_is_freed():
    # a prefill-like burst widens the index; once freed, the padding must not stay (bytes held)
    pool = PagePool(64, 4)
    pool.allocate(torch.tensor([0, 1]), torch.tensor([40, 2]))
    assert pool.table_pages.shape[1] >= 40
    wide = pool.table_bytes()
    pool.free(torch.tensor([0]))
    assert pool.table_pages.shape[1] < 8
    assert pool.table_bytes() < wide / 4
    assert pool.pages_of(torch.tensor([1]))[1].tolist() == [2]
    check_invariants(pool)


def test_table_ids_beyond_the_index_shape():
    pool = PagePool(16, 4)
    assert pool.table_pages.shape == (0, 0)
    # reads and frees of tables the index has never seen: empty, nothing grows
    pages, counts = pool.pages_of(torch.tensor([3, 0]))
    assert pages.tolist() == [] and counts.tolist() == [0, 0]
    assert pool.free(torch.tensor([7, 7])) == 0
    assert pool.table_pages.shape == (0, 0)
    pool.allocate(torch.tensor([2]), torch.tensor([1]))
    assert pool.table_pages.shape == (3, 4)  # at least MIN_SLOTS slots
    # a far table id and a long table grow rows and columns; old entries survive
    ids = pool.allocate(torch.tensor([1000, 2]), torch.tensor([5, 2])).tolist()
    assert pool.table_pages.shape[0] >= 1001 and pool.table_pages.shape[1] >= 5
    assert pool.page_counts(torch.tensor([2, 1000, 5000])).tolist() == [3, 5, 0]
    pages, counts = pool.pages_of(torch.tensor([5000, 2, 1000]))
    assert counts.tolist() == [0, 3, 5]
    assert pages.tolist() == [0] + ids[5:] + ids[:5]
    assert pages.dtype == torch.int64
    assert pool.free(torch.tensor([1000, 5000, 1000])) == 5
    check_invariants(pool)


def test_compaction_remaps_the_index():
    pool = PagePool(12, 1)
    pool.allocate(torch.tensor([0, 1, 2]), torch.tensor([3, 3, 3]))
    pool.data[:9, 0] = torch.arange(9, dtype=torch.uint8)
    pool.free(torch.tensor([0]))
    pool.allocate(torch.tensor([2]), torch.tensor([2]))  # reuses freed ids 0..2 out of order
    mapping = pool.compact()
    assert pool.is_compact()
    check_invariants(pool)
    pages, counts = pool.pages_of(torch.tensor([1, 2]))
    assert counts.tolist() == [3, 5]
    assert pool.data[pages[:6], 0].tolist() == [3, 4, 5, 6, 7, 8]
    assert mapping[torch.tensor([3, 4, 5])].tolist() == pages[:3].tolist()


def test_freed_pages_are_reused():
    pool = PagePool(6, 2)
    pool.allocate(torch.tensor([4]), torch.tensor([6]))
    assert pool.free(torch.tensor([4])) == 6
    assert pool.num_free == 6 and pool.page_counts(torch.tensor([4])).tolist() == [0]
    assert sorted(pool.allocate(torch.tensor([9]), torch.tensor([6])).tolist()) == list(range(6))
    check_invariants(pool)


def test_bad_table_ids_and_first_slot():
    pool = PagePool(8, 2)
    with pytest.raises(LeanstackError, match="table ids must lie"):
        pool.allocate(torch.tensor([-1]), torch.tensor([1]))
    with pytest.raises(LeanstackError, match=">= 0"):
        pool.free(torch.tensor([-1]))
    with pytest.raises(LeanstackError, match=">= 0"):
        pool.pages_of(torch.tensor([0, -2]))
    with pytest.raises(LeanstackError, match="counts must be"):
        pool.allocate(torch.tensor([0]), torch.tensor([-1]))
    pool.allocate(torch.tensor([0]), torch.tensor([2]), first_slot=torch.tensor([0]))
    with pytest.raises(LeanstackError, match="first_slot"):
        pool.allocate(torch.tensor([0]), torch.tensor([1]), first_slot=torch.tensor([0]))
    assert pool.num_free == 6  # a refused allocation takes nothing
    pool.allocate(torch.tensor([0]), torch.tensor([1]), first_slot=torch.tensor([2]))
    assert pool.num_free == 5
    check_invariants(pool)


def test_bad_pool_shape():
    with pytest.raises(LeanstackError, match="page pool"):
        PagePool(4, 0)


def test_trim_gives_back_free_pages_and_keeps_data():
    pool = PagePool(32, 16)
    pages = pool.allocate(torch.tensor([0, 1, 2]), torch.tensor([3, 2, 4]))
    pool.data[pages] = torch.arange(9, dtype=torch.uint8).unsqueeze(1).expand(-1, 16)
    pool.free(torch.tensor([1]))
    before = {t: pool.data[pool.pages_of(torch.tensor([t]))[0]].clone() for t in (0, 2)}
    assert pool.trim(keep_free=2) == 32 - 7 - 2
    assert (pool.num_pages, pool.num_allocated, pool.num_free) == (9, 7, 2)
    assert pool.data.shape[0] == 9  # the bytes are really gone, not just marked free
    check_invariants(pool)
    for t, data in before.items():  # pages moved by compaction still hold their bytes
        assert torch.equal(pool.data[pool.pages_of(torch.tensor([t]))[0]], data)
    assert pool.allocate(torch.tensor([5]), torch.tensor([2])).tolist() == [7, 8]
    with pytest.raises(PoolExhausted):
        pool.allocate(torch.tensor([6]), torch.tensor([1]))
    assert pool.trim() == 0
    with pytest.raises(LeanstackError, match="keep_free"):
        pool.trim(keep_free=-1)
