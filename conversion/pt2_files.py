""".pt2 archives written byte-reproducibly: the records in a fixed order under a fixed prefix.

torch writes a .pt2 (torch.export.save, AOTInductor's package) with a random serialization id and
under a directory named after the file, and AOTInductor names its files after hashes that include
the compile's absolute paths. rewrite() takes the records (name -> bytes) and writes them again
through torch's own archive writer, which gives fixed timestamps, its 64-byte record alignment
(what torch's readers expect) and a serialization id derived from the records it writes, so equal
records give equal bytes. The prefix is the writer's own for an in-memory archive ("archive");
torch's loaders read any prefix.
"""

import io

SERIALIZATION_ID = ".data/serialization_id"
# The node metadata torch.export.save writes (torch/_export/serde/serialize.py, serialize_metadata).
# None of it is needed to run a program, and stack_trace holds the absolute paths of
# training/model.py and of torch's files, which differ between checkouts and Bazel sandboxes.
NODE_METADATA = ("stack_trace", "nn_module_stack", "source_fn_stack", "torch_fn", "custom")


def records(source) -> dict[str, bytes]:
    """Every record of a torch archive (a path or bytes), by name without the archive's prefix."""
    import torch

    reader = torch._C.PyTorchFileReader(io.BytesIO(source) if isinstance(source, bytes) else source)
    return {name: reader.get_record(name) for name in reader.get_all_records()}


def rewrite(entries: dict[str, bytes]) -> bytes:
    """The archive of `entries` (name -> bytes), sorted by name; the serialization id is the writer's."""
    import torch

    out = io.BytesIO()
    writer = torch._C.PyTorchFileWriter(out)
    for name in sorted(entries):
        if name == SERIALIZATION_ID:
            continue
        data = entries[name]
        writer.write_record(name, data, len(data))
    writer.write_end_of_file()
    return out.getvalue()


def program_bytes(program) -> bytes:
    """torch.export.save's archive of `program` (an ExportedProgram), byte-reproducible: without the
    node metadata (NODE_METADATA) and without example inputs (a pickle, which torch.export.load
    would unpickle, falling back to weights_only=False), its records rewritten by rewrite().
    Strips the metadata from `program` itself; its example inputs are put back."""
    import torch

    for node in program.graph.nodes:
        for key in NODE_METADATA:
            node.meta.pop(key, None)
    examples, program.example_inputs = program.example_inputs, None
    try:
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
    finally:
        program.example_inputs = examples
    return rewrite(records(buffer.getvalue()))
