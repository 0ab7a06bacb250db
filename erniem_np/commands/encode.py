"""``erniem-np encode``: texts to embeddings in a .npy or .safetensors file, streamed; optionally on Dask."""

from __future__ import annotations

import argparse
import os

from ..pipelines.encode import open_writer
from ._common import (
    UserError,
    add_input_options,
    add_model_options,
    add_run_options,
    pipeline_options,
    run_chunked,
    strings,
    wrap,
)
from ._common import numbered_inputs as _iter_inputs


def run(args: argparse.Namespace) -> int:
    from ..pipelines.chunks import TaskSpec

    options = pipeline_options(args)
    options.update(pooling=args.pooling, chunk_size=args.chunk_size, normalize=args.normalize)
    if args.output:
        ext = os.path.splitext(args.output)[1].lower()
        if ext not in (".npy", ".safetensors"):
            raise UserError(f"{args.output}: the output must end in .npy or .safetensors")
        if ext == ".npy" and args.pooling == "last":
            raise UserError("--pooling last gives a different number of rows per text: write a .safetensors "
                            "file (last_hidden_state + offsets), not .npy")  # fmt: skip
        if args.resume and args.pooling == "last":
            raise UserError("--resume cannot continue a --pooling last output (its offsets are written at the "
                            "end); run without --resume")  # fmt: skip
    spec = TaskSpec.of("encode", args.model, options)
    return run_chunked(args, spec, strings(_iter_inputs(args), "text"),
                       lambda text, v: {"text": text, "embedding": v.tolist()}, what="encoding",
                       output=EmbeddingsFile)  # fmt: skip


class EmbeddingsFile:
    """-o OUT.npy / OUT.safetensors: each chunk's block of embeddings appended (pipelines/encode.py's writers,
    writing into the run's journal file)."""

    def __init__(self, encoder, journal, _record):
        self.encoder, self.journal = encoder, journal
        self.writer = open_writer(journal.path, encoder.pooling, encoder.dim, encoder.dtype,
                                  metadata={"pooling": encoder.pooling, "format": "np"},
                                  file=(journal.f, journal.tmp), rows=journal.done)  # fmt: skip

    def write(self, _texts: list, block) -> None:
        self.writer.write(block)

    def close(self) -> None:
        self.writer.close()  # the final header, then renamed over the output
        self.journal.forget_state()

    def summary(self, n: int) -> dict:
        enc = self.encoder
        return {"output": self.journal.path, "texts": n, "pooling": enc.pooling, "dim": enc.dim,
                "dtype": str(enc.dtype)}  # fmt: skip

    def describe(self, n: int) -> str:
        enc = self.encoder
        what = "token vectors of" if enc.pooling == "last" else "embeddings of"
        return f"wrote {what} {n} texts ({enc.pooling}, {enc.dim} wide, {enc.dtype}) to {self.journal.path}"


def register(sub) -> None:
    p = sub.add_parser(
        "encode",
        help="texts to embeddings (.npy / .safetensors), streamed; --dask to scale out",
        description=wrap(
            "Embed texts with any ErnieM checkpoint (a head, if any, is ignored). Texts come as "
            "arguments, from --input (.txt: one per line; .jsonl: see --field) or stdin, and are read as a stream: "
            "memory stays flat on inputs larger than RAM. With -o the embeddings go to a file: .npy ([N, H] float32) "
            "or .safetensors (tensor 'embeddings' [N, H]; with --pooling last, 'last_hidden_state' [T, H] of all "
            "tokens and 'offsets' [N+1]: text i is rows offsets[i]:offsets[i+1]). Without -o each text's embedding "
            'is printed as JSON Lines ({"text", "embedding"}), or one JSON array with --json.'
        ),
        epilog="exit codes: 0 success; 1 bad input or checkpoint (one line on stderr); 2 bad command line.\n"
        "example: erniem-np encode ckpt/ --input texts.txt -o emb.npy --pooling mean\n"
        "         erniem-np encode ckpt/ --input texts.txt -o emb.npy --dask tcp://scheduler:8786",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(p)
    add_input_options(p)
    p.add_argument("--pooling", choices=("pooled", "cls", "mean", "last"), default="pooled",
                   help="pooled: the pooler's tanh(dense([CLS])) (default); cls: [CLS]'s last hidden state; mean: "
                   "mean over the text's tokens (padding excluded); last: every token's last hidden state")  # fmt: skip
    p.add_argument("--normalize", action="store_true", help="scale each embedding to unit L2 norm")
    add_run_options(p, chunk_size=1024, what="texts", output_help="OUT.npy or OUT.safetensors (default: print "
                    "JSON Lines)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON: the summary with -o, else one array")
    p.set_defaults(func=run)
