"""Text of an HTML book: start at a page, follow <link rel="next"> for N pages, strip tags with
html.parser (dropping <head>, the #banner, #title and .docnav navigation blocks and <script>/<style>),
collapse runs of blank lines, pages joined with blank lines. Usage: html_book.py START.html N"""
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

SKIP_TAGS = {"head", "script", "style"}
VOID = {"br", "img", "meta", "link", "hr", "input", "area", "base", "col", "embed", "param", "source", "wbr"}
BLOCK = {"p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "li", "pre", "tr", "dt", "dd", "table", "ul", "ol",
         "br", "blockquote", "title"}


class Text(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out, self.skip, self.stack, self.next = [], 0, [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "link" and a.get("rel") == "next":
            self.next = a.get("href")
        if tag in VOID:
            if tag == "br" and not self.skip:
                self.out.append("\n")
            return
        skip = tag in SKIP_TAGS or a.get("id") in ("banner", "title") or "docnav" in (a.get("class") or "").split()
        self.stack.append((tag, skip))
        if skip:
            self.skip += 1
        if tag in BLOCK and not self.skip:
            self.out.append("\n")

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        while self.stack:
            t, skip = self.stack.pop()
            if skip:
                self.skip -= 1
            if t == tag:
                break
        if tag in BLOCK and not self.skip:
            self.out.append("\n")

    def handle_data(self, data):
        if not self.skip:
            self.out.append(data)


def page_text(path):
    p = Text()
    p.feed(Path(path).read_text(encoding="utf-8"))
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in "".join(p.out).splitlines()]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return text, p.next


start, n = Path(sys.argv[1]), int(sys.argv[2])
pages, path = [], start
for _ in range(n):
    text, nxt = page_text(path)
    pages.append(text)
    if not nxt:
        break
    path = path.parent / nxt
print("\n\n".join(pages))
