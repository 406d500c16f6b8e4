"""The README's examples run as written (on the XLA implementation) and mean what they say."""

import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_readme_examples_run():
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
  assert len(blocks) >= 7
  env: dict = {}
  exec(compile("\n".join(blocks), str(README), "exec"), env)
  # merge_states example: the merge equals attention over all keys.
  jattn = env["jattn"]
  o, _ = jattn.merge_states(env["o1"], env["l1"], env["o2"], env["l2"])
  full = jattn.attention(env["q"], env["k"], env["v"])
  err = np.abs(np.asarray(o, np.float32) - np.asarray(full, np.float32)).max()
  assert err < 3e-2
