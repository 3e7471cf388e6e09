#!/bin/bash
# Builds the single-file documents in /work/research/docs (multi-file ones are concatenated by
# dprope compare's NAME=PATH,PATH form, joined with "\n\n"; see docs/MANIFEST.md).
set -euo pipefail
D=/work/research/docs
cd $D
MANWIDTH=80 man -P cat bash | col -bx > bash-man.txt
MANWIDTH=80 man -P cat curl | col -bx > curl-man.txt
zcat /usr/share/info/coreutils.info.gz > coreutils-info.txt
cp /root/.pyenv/versions/3.11.7/lib/python3.11/typing.py typing-py.txt
. /work/venv/bin/activate
python /work/research/scripts/html_book.py /usr/share/doc/debian-handbook/html/en-US/the-debian-project.html 40 > debian-handbook.txt
