"""What a running search hands its proposers from the lab notebook (`population.notebook`).

The notebook is derived from the studies, so the search never writes it as such: before each
proposal, `recall` adds the rows of trials that finished since and returns the ideas of every
search of the same task, this one included. The first call of a process also reads in the
other searches beside this one (those made before the notebook existed, or by another
process), so a new search starts with what the earlier ones learned.
"""

from __future__ import annotations

import threading

import sqlalchemy as sa

from population.lineage import Lineage
from population.notebook import Notebook, Recall, task_of
from population.search import Search

_books: dict[str, Notebook] = {}
_lock = threading.Lock()


def notebook_for(search: Search) -> tuple[Notebook, bool]:
    """The process's notebook for `search` (one per database), and whether this call opened it."""
    url = Notebook.url_for(search)
    with _lock:
        book = _books.get(url)
        if book is not None:
            return book, False
        book = _books[url] = Notebook(url)
        return book, True


def recall(search: Search, lineage: Lineage, say=lambda line: None) -> Recall:
    """The notebook's ideas of `search`'s task, after adding the ones `lineage` finished since.

    A notebook that cannot be read or written (a locked file, a lost database) gives no memory this
    time and one line to `say`: it helps a search, and must never stop one."""
    try:
        book, opened = notebook_for(search)
        if opened and not search.config.shared:
            book.sync_root(search.folder.parent, warn=say)
        book.sync(search, lineage)
        return Recall.of(book.of_task(task_of(search.config)))
    except sa.exc.SQLAlchemyError as e:
        say(f"the lab notebook could not be read ({type(e).__name__}); this proposal goes without it")
        return Recall()
