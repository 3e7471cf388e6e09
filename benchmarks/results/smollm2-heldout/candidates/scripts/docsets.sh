DOCS=/work/research/docs
L=/usr/share/common-licenses
V=/usr/share/vim/vim90/doc
TUNING="licenses=$L/GPL-3,$L/GFDL-1.3,$L/MPL-2.0,$L/Apache-2.0 vim-user-manual=$V/usr_01.txt,$V/usr_02.txt,$V/usr_03.txt,$V/usr_04.txt bash-man=$DOCS/bash-man.txt"
HELDOUT="curl-man=$DOCS/curl-man.txt coreutils-info=$DOCS/coreutils-info.txt vim-usr2x=$V/usr_20.txt,$V/usr_21.txt,$V/usr_22.txt,$V/usr_23.txt,$V/usr_24.txt,$V/usr_25.txt,$V/usr_26.txt,$V/usr_27.txt,$V/usr_28.txt,$V/usr_29.txt typing-py=$DOCS/typing-py.txt xtrans-c=/usr/include/X11/Xtrans/Xtranssock.c,/usr/include/X11/Xtrans/Xtranslcl.c debian-handbook=$DOCS/debian-handbook.txt"
