"""pipeline_stage: one step of the artifact chain, run by a py_binary as a cacheable Bazel action.

A stage maps its input files and outputs to the tool's flags:

    pipeline_stage(
        name = "checkpoint",
        tool = "//training:run_toy_distill",
        mnemonic = "M8bTrain",
        inputs = {"in": ":kd.jsonl", "tokenizer": ":tokenizer.json"},
        outputs = {"out_weights": "student.safetensors"},
        args = ["--steps=600"],
    )

runs `run_toy_distill --in=<kd.jsonl> --tokenizer=<tokenizer.json> --out_weights=<...> --steps=600`.
Output files get labels of their own (":student.safetensors"). Outputs that are directories, such
as a Core ML .mlpackage, go in `output_dirs`; Bazel tracks them as tree artifacts, and they are
the stage target's only default output, so later stages name them by the stage's label.
Each stage has its own mnemonic, so build logs and cache statistics tell stages apart.
"""

def _single_file(target, flag):
    files = target.files.to_list()
    if len(files) != 1:
        fail("--%s: %s provides %d files; name one file (or a stage with one directory output)" % (
            flag,
            target.label,
            len(files),
        ))
    return files[0]

def _pipeline_stage_impl(ctx):
    args = ctx.actions.args()
    inputs = []
    for target, flag in ctx.attr.inputs.items():
        file = _single_file(target, flag)
        inputs.append(file)
        args.add("--%s=%s" % (flag, file.path))
    outputs = []
    for flag, file in zip(ctx.attr.output_flags, ctx.outputs.outs):
        outputs.append(file)
        args.add("--%s=%s" % (flag, file.path))
    directories = []
    for flag, name in zip(ctx.attr.output_dir_flags, ctx.attr.output_dir_names):
        directory = ctx.actions.declare_directory(name)
        directories.append(directory)
        args.add("--%s=%s" % (flag, directory.path))
    args.add_all(ctx.attr.args)
    ctx.actions.run(
        executable = ctx.executable.tool,
        arguments = [args],
        inputs = inputs,
        outputs = outputs + directories,
        mnemonic = ctx.attr.mnemonic,
        progress_message = "%s %s" % (ctx.attr.mnemonic, ctx.label),
        env = {
            # Same inputs, same bytes: fix the hash seed so nothing varies between runs.
            "PYTHONHASHSEED": "0",
            # Tools size their own thread pools (the trainer uses --threads); idle BLAS/OpenMP
            # pools spinning on 2 cores made small forwards 5-50x slower.
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
        },
    )
    default = directories or outputs
    # runfiles too: a binary or test that lists this stage in `data` must see its directories.
    return [DefaultInfo(files = depset(default), runfiles = ctx.runfiles(files = default))]

_pipeline_stage = rule(
    implementation = _pipeline_stage_impl,
    attrs = {
        "tool": attr.label(executable = True, cfg = "exec", mandatory = True),
        "mnemonic": attr.string(mandatory = True),
        "inputs": attr.label_keyed_string_dict(allow_files = True),
        "outs": attr.output_list(),
        "output_flags": attr.string_list(),
        "output_dir_names": attr.string_list(),
        "output_dir_flags": attr.string_list(),
        "args": attr.string_list(),
    },
)

def pipeline_stage(name, tool, mnemonic, inputs = {}, input_lists = {}, outputs = {}, output_dirs = {}, args = [], **kwargs):
    """A pipeline step: `tool --<flag>=<input> ... --<flag>=<output> ... <args>`.

    Args:
      name: the stage's target name.
      tool: a py_binary label.
      mnemonic: the action's name in logs and cache statistics.
      inputs: {flag: label of one file}.
      input_lists: {flag: [labels of one file each]}: the flag is repeated, once per file.
      outputs: {flag: file name}; each output gets the label ":<file name>".
      output_dirs: {flag: directory name}; the stage target's default outputs.
      args: further flags, passed as written.
      **kwargs: common attributes (visibility, tags).
    """
    by_label = {label: flag for flag, label in inputs.items()}
    by_label.update({label: flag for flag, labels in input_lists.items() for label in labels})
    _pipeline_stage(
        name = name,
        tool = tool,
        mnemonic = mnemonic,
        inputs = by_label,
        outs = outputs.values(),
        output_flags = outputs.keys(),
        output_dir_names = output_dirs.values(),
        output_dir_flags = output_dirs.keys(),
        args = args,
        **kwargs
    )
