"""What counts as a word, in any script: for chunk sizes, bm25's terms and the answer metrics alike.

Chinese, Japanese, Thai, Lao, Khmer and Burmese put no spaces between words, so each of their
characters counts as one (as the MLQA and CMRC evaluations do); elsewhere a word is a run of
characters between spaces.
"""

from __future__ import annotations

import re

UNSPACED = "\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
MAX_CHUNK_WORD = 16  # for chunk sizes, a longer run (a URL, base64, a table without spaces) counts as one word per 16 characters

CHUNK_WORD = re.compile(rf"[{UNSPACED}]|[^\s{UNSPACED}]{{1,{MAX_CHUNK_WORD}}}")
ANSWER_WORD = re.compile(rf"[{UNSPACED}]|[^\s{UNSPACED}]+")
# bm25s's own pattern (words of 2+ letters), except that each unspaced character is a term: its pattern made a whole
# Chinese sentence one term, which no question ever matched
LEXICAL_TOKEN = rf"(?u)[{UNSPACED}]|[^\W{UNSPACED}]{{2,}}"
