"""The frame rows: one episode's columns, and the parquet files they go into."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rlds.datasets.lerobot.episodes import EpisodeColumns
from rlds.datasets.lerobot.layout import DATA_PATH, DEPTH_KEY, next_file


def frame_columns(
    cols: EpisodeColumns, *, fps: int, state: str, ep_index: int, global_index: int
) -> dict[str, np.ndarray]:
    """The per-frame features of one episode, in the dataset's column order."""
    n = len(cols.actions)
    actions = np.stack(cols.actions).astype(np.float32)
    frame_index = np.arange(n, dtype=np.int64)
    timestamp = (frame_index / fps).astype(np.float32)
    t = np.asarray(cols.t, dtype=np.float64)
    recorded = t - t[0]
    columns: dict[str, np.ndarray] = {"action": actions}
    if state == "prev_action":
        prev = np.zeros_like(actions)
        prev[1:] = actions[:-1]
        columns["observation.state"] = prev
    columns.update(
        {
            "next.reward": np.asarray(cols.rewards, dtype=np.float32),
            "next.done": np.asarray(cols.is_last, dtype=bool),
            "next.terminated": np.asarray(cols.is_terminal, dtype=bool),
            "recorded_time": recorded,
            "timestamp": timestamp,
            "frame_index": frame_index,
            "episode_index": np.full(n, ep_index, dtype=np.int64),
            "index": np.arange(global_index, global_index + n, dtype=np.int64),
            "task_index": np.zeros(n, dtype=np.int64),
        }
    )
    return columns


def frame_table(columns: dict[str, np.ndarray], depth_png: list[bytes] | None) -> Any:
    """The columns as an Arrow table; vectors as fixed-size lists, depth as image structs."""
    import pyarrow as pa

    arrays: dict[str, Any] = {}
    for key, val in columns.items():
        if val.ndim == 2:
            arrays[key] = pa.FixedSizeListArray.from_arrays(pa.array(val.reshape(-1)), val.shape[1])
        else:
            arrays[key] = pa.array(val)
    if depth_png is not None:
        arrays[DEPTH_KEY] = pa.array(
            [{"bytes": b, "path": None} for b in depth_png],
            pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
        )
    return pa.table(arrays)


class DataFiles:
    """The ``data/`` parquet files: episodes back to back, a new file once one is full.

    Files roll over only between episodes, so an episode's rows are in one file;
    every table is cast to the first one's schema so all files agree.
    """

    def __init__(
        self, out_dir: Path, written: list[Path], *, chunks_size: int, max_mb: float
    ) -> None:
        self.out_dir, self.written = out_dir, written
        self.chunks_size, self.max_mb = chunks_size, max_mb
        self.chunk = self.file = 0
        self.writer: Any = None
        self.bytes = 0
        self.schema: Any = None

    def _open(self) -> Any:
        import pyarrow.parquet as pq

        path = self.out_dir / DATA_PATH.format(chunk_index=self.chunk, file_index=self.file)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.written.append(path)
        return pq.ParquetWriter(path, self.schema, compression="snappy", use_dictionary=True)

    def write(self, table: Any) -> None:
        """Append one episode's rows; ``chunk``/``file`` then name the file holding them."""
        if self.schema is None:
            self.schema = table.schema
        table = table.cast(self.schema)
        if self.writer is not None and self.bytes >= self.max_mb * 1024 * 1024:
            self.writer.close()
            self.chunk, self.file = next_file(self.chunk, self.file, self.chunks_size)
            self.writer, self.bytes = None, 0
        if self.writer is None:
            self.writer = self._open()
        self.writer.write_table(table)
        self.bytes += table.nbytes

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
