"""CIMI filter parsing and evaluation, as the Nuvla API server does it.

The grammar is the server's own (`resources/sixsq/nuvla/db/filter/
cimi-filter-grammar.txt`, an instaparse grammar without auto-whitespace),
parsed here by hand. Whitespace is accepted only where that grammar has it, so
its quirks carry over: by the grammar `tags=['a'] and x='y'` is a parse error
(no whitespace may follow `]`), and `tags= ['a']` too.

Evaluation follows Elasticsearch term semantics: an attribute path
(`content/linked-identifiers`) yields every leaf value (arrays flattened);
`attr='v'` holds when any value equals v, `!=` when none does (so a missing
attribute matches `!=`), `=null` when there is no value. Attributes under
`content/resource/content` are not indexed (the event spec says so) and never
match anything.

Standard library only.
"""

import re

import schema

_WS_RE = re.compile(r"\s*")
_TERM_RE = re.compile(r"([a-zA-Z][\w-]*[\w]+)|[a-zA-Z]")
_INT_RE = re.compile(r"\d+")
_DATE_RE = re.compile(r"\d+-\d+(-\d+)?(T\d+:\d+:\d+(\.\d+)?(Z|[+-]\d+:\d+))?")
_DQ_RE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_SQ_RE = re.compile(r"'[^'\\]*(?:\\.[^'\\]*)*'")
_UNESCAPE_RE = re.compile(r"\\(.)", re.S)

# Paths whose values Elasticsearch does not index (spec: :json-schema/indexed false).
NOT_INDEXED_PREFIXES = (("content", "resource", "content"),)


class FilterError(Exception):
    """A filter that does not parse; message() mimics instaparse's failure text."""

    def __init__(self, text, pos, expected):
        super().__init__("filter parse error at %d" % pos)
        self.text, self.pos, self.expected = text, pos, expected

    def message(self):
        before = self.text[:self.pos]
        line = before.count("\n") + 1
        col = self.pos - (before.rfind("\n") + 1) + 1
        text_line = self.text.split("\n")[line - 1]
        return "Parse error at line %d, column %d:\n%s\n%s^\nExpected one of:\n%s\n" % (
            line, col, text_line, " " * (col - 1), "\n".join(sorted(self.expected)))


class QueryError(Exception):
    """A filter that parses but cannot run (the server answers 500)."""


class _Parser:
    """Recursive descent over the CIMI grammar; remembers the farthest failure."""

    def __init__(self, text):
        self.t = text
        self.far = 0
        self.exp = set()

    # -- primitives: each returns the new position, or None after noting why
    def _fail(self, pos, what):
        if pos > self.far:
            self.far, self.exp = pos, {what}
        elif pos == self.far:
            self.exp.add(what)
        return None

    def _ws(self, pos):
        return _WS_RE.match(self.t, pos).end()

    def _lit(self, pos, s):
        if self.t.startswith(s, pos):
            return pos + len(s)
        return self._fail(pos, '"%s"' % s)

    def _rx(self, pos, rx, name):
        m = rx.match(self.t, pos)
        if m is None:
            self._fail(pos, name)
        return m

    # -- grammar
    def parse(self):
        r = self._or(0)
        if r is not None and r[1] == len(self.t):
            return r[0]
        if r is not None:
            self._fail(r[1], "<end of input>")
        raise FilterError(self.t, self.far, self.exp or {"<filter>"})

    def _chain(self, pos, sub, keyword, kind):
        r = sub(pos)
        if r is None:
            return None
        nodes, pos = [r[0]], r[1]
        while True:
            p = self._lit(pos, keyword)
            if p is None:
                break
            r = sub(p)
            if r is None:
                break
            nodes.append(r[0])
            pos = r[1]
        return (nodes[0] if len(nodes) == 1 else (kind, nodes)), pos

    def _or(self, pos):
        return self._chain(pos, self._and, "or", "or")

    def _and(self, pos):
        return self._chain(pos, self._comp_or, "and", "and")

    def _comp_or(self, pos):
        r = self._comp(pos)
        if r is not None:
            return r
        p = self._lit(self._ws(pos), "(")
        if p is None:
            return None
        r = self._or(p)
        if r is None:
            return None
        p = self._lit(r[1], ")")
        if p is None:
            return None
        return r[0], self._ws(p)

    # Operators in the order they are tried: longer literals first.
    _FORWARD = (("==", "fulltext", "_string_value"), ("^=", "prefix", "_string_value"),
                ("!=", "ne", "_eq_value"), ("<=", "le", "_ordinal"), (">=", "ge", "_ordinal"),
                ("=", "eq", "_eq_value"), ("<", "lt", "_ordinal"), (">", "gt", "_ordinal"),
                ("intersects", "geo", "_string_value"), ("disjoint", "geo", "_string_value"),
                ("within", "geo", "_string_value"), ("contains", "geo", "_string_value"))
    _FLIP = {"lt": "gt", "gt": "lt", "le": "ge", "ge": "le"}

    def _comp(self, pos):
        a = self._attribute(pos)
        if a is not None:
            for lit, op, valfn in self._FORWARD:
                p = self._lit(a[1], lit)
                if p is None:
                    continue
                v = getattr(self, valfn)(p)
                if v is not None:
                    return ("cmp", a[0], op, v[0]), v[1]
        # Reversed forms: Value op Attribute.
        for lit, op, valfn in self._FORWARD:
            if op == "geo":
                continue
            v = getattr(self, valfn)(pos)
            if v is None:
                continue
            p = self._lit(v[1], lit)
            if p is None:
                continue
            a = self._attribute(p)
            if a is not None:
                return ("cmp", a[0], self._FLIP.get(op, op), v[0]), a[1]
        return None

    def _attribute(self, pos):
        p = self._ws(pos)
        terms = []
        while True:
            r = self._namespace_term(p)
            if r is None:
                return None
            terms.append(r[0])
            p = r[1]
            q = self._lit(p, "/")
            if q is None:
                break
            p = q
        return tuple(terms), self._ws(p)

    def _namespace_term(self, pos):
        m = self._rx(pos, _TERM_RE, "<attribute name>")
        if m is None:
            return None
        p = self._lit(m.end(), ":")
        if p is not None:
            m2 = self._rx(p, _TERM_RE, "<attribute name>")
            if m2 is not None:
                return m.group(0) + ":" + m2.group(0), m2.end()
        return m.group(0), m.end()

    def _string_value(self, pos):
        p = self._ws(pos)
        m = _DQ_RE.match(self.t, p) or _SQ_RE.match(self.t, p)
        if m is None:
            return self._fail(p, "<quoted string>")
        s = _UNESCAPE_RE.sub(r"\1", m.group(0)[1:-1])
        return ("str", s), self._ws(m.end())

    def _ordinal(self, pos):
        p = self._ws(pos)
        m = _DATE_RE.match(self.t, p)
        if m is not None:
            return ("date", m.group(0)), self._ws(m.end())
        m = self._rx(p, _INT_RE, "<integer>")
        if m is not None:
            return ("int", int(m.group(0))), self._ws(m.end())
        return self._string_value(pos)

    def _value(self, pos):
        r = self._ordinal(pos)
        if r is not None:
            return r
        p = self._ws(pos)
        for word, node in (("true", ("bool", True)), ("false", ("bool", False)), ("null", ("null",))):
            q = self._lit(p, word)
            if q is not None:
                return node, self._ws(q)
        return None

    def _values(self, pos):
        p = self._lit(pos, "[")
        if p is None:
            return None
        items = []
        r = self._ordinal(p)
        if r is None:
            return None
        items.append(r[0])
        p = r[1]
        while True:
            q = self._ws(p)
            if self.t.startswith(",", q):
                q = q + 1
            r = self._ordinal(self._ws(q))
            if r is None:
                break
            items.append(r[0])
            p = r[1]
        p = self._lit(p, "]")
        if p is None:
            return None
        return ("list", items), p

    def _eq_value(self, pos):
        return self._values(pos) or self._value(pos)


def parse(text):
    """Parses a CIMI filter into an AST; raises FilterError."""
    return _Parser(text).parse()


def parse_params(filters):
    """Parses repeated `filter` parameters the way the server does: each one is
    wrapped in parentheses and they are joined with `and`. None when absent."""
    if not filters:
        return None
    return parse(" and ".join("(%s)" % f for f in filters))


# ------------------------------------------------------------------ evaluation

def values_at(doc, path):
    """Every indexed leaf value at an attribute path; arrays are flattened."""
    for prefix in NOT_INDEXED_PREFIXES:
        if tuple(path[:len(prefix)]) == prefix:
            return []
    cur = [doc]
    for key in path:
        nxt = []
        for c in cur:
            if isinstance(c, dict) and key in c:
                x = c[key]
                nxt.extend(_flatten(x))
        cur = nxt
    return [v for v in cur if v is not None]


def _flatten(x):
    if isinstance(x, list):
        out = []
        for i in x:
            out.extend(_flatten(i))
        return out
    return [x]


def date_epoch(v):
    """Epoch seconds of a date string (full timestamp or YYYY-MM-DD), else None."""
    if not isinstance(v, str):
        return None
    t = schema.parse_timestamp(v)
    if t is None and re.fullmatch(r"\d{4}-\d{2}-\d{2}", v):
        t = schema.parse_timestamp(v + "T00:00:00Z")
    return t


def _scalar(node):
    kind = node[0]
    return None if kind == "null" else node[1]


def _eq(v, node):
    kind = node[0]
    want = _scalar(node)
    if kind == "bool":
        return (isinstance(v, bool) and v is want) or v == ("true" if want else "false")
    if kind == "int":
        if isinstance(v, bool):
            return False
        return (isinstance(v, (int, float)) and v == want) or v == str(want)
    if isinstance(v, str):
        if v == want:
            return True
        a, b = date_epoch(v), date_epoch(want)
        return a is not None and a == b
    return False


def _cmp(v, node):
    """-1/0/1 comparing a document value with a filter value; None if incomparable."""
    want = _scalar(node)
    a, b = date_epoch(v), date_epoch(want) if isinstance(want, str) else None
    if a is not None and b is not None:
        pass
    elif isinstance(v, (int, float)) and not isinstance(v, bool) and node[0] == "int":
        a, b = v, want
    elif isinstance(v, str) and isinstance(want, str):
        a, b = v, want
    else:
        return None
    return (a > b) - (a < b)


def matches(ast, doc):
    """True when doc satisfies the filter AST (None = no filter)."""
    if ast is None:
        return True
    kind = ast[0]
    if kind == "or":
        return any(matches(n, doc) for n in ast[1])
    if kind == "and":
        return all(matches(n, doc) for n in ast[1])
    _, path, op, node = ast
    vals = values_at(doc, path)
    if op in ("eq", "ne"):
        if node[0] == "null":
            hit = not vals
        elif node[0] == "list":
            hit = any(_eq(v, item) for v in vals for item in node[1])
        else:
            hit = any(_eq(v, node) for v in vals)
        return hit if op == "eq" else not hit
    if op in ("lt", "le", "gt", "ge"):
        for v in vals:
            c = _cmp(v, node)
            if c is None:
                continue
            if (op == "lt" and c < 0) or (op == "le" and c <= 0) or \
                    (op == "gt" and c > 0) or (op == "ge" and c >= 0):
                return True
        return False
    if op == "prefix":
        return any(isinstance(v, str) and v.startswith(node[1]) for v in vals)
    if op == "fulltext":
        words = node[1].lower().split()
        return any(isinstance(v, str) and all(w in v.lower().split() for w in words)
                   for v in vals)
    raise QueryError("geo queries are not supported on %s" % "/".join(path))


def sort_key(doc, path, descending):
    """ES-like sort value of a (possibly multi-valued) attribute, or None if missing."""
    vals = values_at(doc, path)
    keys = []
    for v in vals:
        t = date_epoch(v)
        if t is not None:
            keys.append((0, t))
        elif isinstance(v, bool):
            keys.append((2, int(v)))
        elif isinstance(v, (int, float)):
            keys.append((0, v))
        elif isinstance(v, str):
            keys.append((1, v))
    if not keys:
        return None
    return max(keys) if descending else min(keys)


def sort_docs(docs, orderby):
    """Sorts by [(path, 'asc'|'desc'), ...]; missing values last; stable."""
    out = list(docs)
    for path, direction in reversed(orderby):
        desc = direction == "desc"
        keyed = [(sort_key(d, path, desc), d) for d in out]
        present = [kd for kd in keyed if kd[0] is not None]
        missing = [kd[1] for kd in keyed if kd[0] is None]
        present.sort(key=lambda kd: kd[0], reverse=desc)
        out = [kd[1] for kd in present] + missing
    return out
