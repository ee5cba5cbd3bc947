"""The genome: a merge sort that hands short runs to insertion sort. evoresearch tunes its constants."""

INSERTION_THRESHOLD = 2   # runs this short are sorted by insertion (cheap for small n)
MERGE_GALLOP = False      # copy the rest of a run at once when the other run is exhausted


def insertion_sort(values, lo, hi):
    for i in range(lo + 1, hi):
        item = values[i]
        j = i - 1
        while j >= lo and values[j] > item:
            values[j + 1] = values[j]
            j -= 1
        values[j + 1] = item


def merge(values, lo, mid, hi):
    left, right = values[lo:mid], values[mid:hi]
    i = j = 0
    k = lo
    while i < len(left) and j < len(right):
        if left[i] <= right[j]:
            values[k] = left[i]
            i += 1
        else:
            values[k] = right[j]
            j += 1
        k += 1
    if MERGE_GALLOP:
        values[k:k + len(left) - i] = left[i:]
        return
    while i < len(left):
        values[k] = left[i]
        i += 1
        k += 1


def sort(values):
    """Sort `values` in place and return it."""
    def rec(lo, hi):
        if hi - lo <= INSERTION_THRESHOLD:
            insertion_sort(values, lo, hi)
            return
        mid = (lo + hi) // 2
        rec(lo, mid)
        rec(mid, hi)
        merge(values, lo, mid, hi)
    rec(0, len(values))
    return values
