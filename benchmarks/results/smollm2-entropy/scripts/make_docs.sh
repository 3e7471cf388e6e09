#!/bin/bash
# The three fresh documents (paths of the development machine; Debian 12 packages as installed there).
F=/work/research/fresh
MANWIDTH=80 man -P cat gpg | col -bx > $F/gpg-man.txt          # gnupg 2.2.40-1.1+deb12u2
cp /usr/lib/python3.11/argparse.py $F/argparse-py.txt          # Debian python3.11 3.11.2-6+deb12u6
zcat /usr/share/info/gettext.info.gz > $F/gettext-info.txt     # gettext 0.21-12
