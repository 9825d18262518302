"""Text from files and config (file names, defect and category names, config values) made safe
for each place it is shown: HTML (text and quoted attributes), URLs, Markdown table cells, CSV
text cells, matplotlib labels. Every writer escapes with these; where the package reads a file
back, the inverse beside the escape gives the original text."""
import html
import os
import re
import urllib.parse

# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def html_text(value) -> str:
    """`value` as HTML text, also safe inside a quoted attribute: & < > " ' escaped."""
    return html.escape(str(value), quote=True)


def url_path(path: str) -> str:
    """A relative file path as a URL path: every character but letters, digits, '_.-~' and the
    separators percent-encoded (UTF-8), so '#', '?', '%', ':' and quotes stay part of the name
    and no scheme can start it. Still pass it through `html_text` into an attribute."""
    return urllib.parse.quote(path.replace(os.sep, "/"), safe="/")


# Backslash escapes for what Markdown (GFM) reads as cell breaks, code, emphasis or links;
# '_' stays, as inside a word it is no emphasis and names like no_overlap stay readable.
_MD_ESCAPED = re.compile(r"([\\|`*\[\]])")
_MD_ENTITIES = (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"))  # raw HTML passes Markdown


def md_cell(value) -> str:
    """`value` as one Markdown table cell (or heading): line breaks become spaces, cell
    breaks, code, emphasis and link marks are backslash-escaped, & < > become entities."""
    text = " ".join(str(value).splitlines())
    text = _MD_ESCAPED.sub(r"\\\1", text)
    for char, entity in _MD_ENTITIES:
        text = text.replace(char, entity)
    return text


def md_plain(cell: str) -> str:
    """The text `md_cell` escaped (line breaks aside), e.g. a results.md heading read back."""
    return re.sub(r"\\(.)", r"\1", html.unescape(cell))


def _is_formula(text: str) -> bool:
    # Apostrophes first too, so that `csv_text_value` can strip exactly the one added.
    return text.lstrip("'")[:1] in FORMULA_STARTS


def csv_text_cell(value):
    """A CSV text cell a spreadsheet will not run: a str that starts (after any apostrophes)
    with = + - @ TAB or CR gets a leading apostrophe. Other values (numbers) are returned
    as they are; pass only text columns, never a formatted number."""
    if isinstance(value, str) and _is_formula(value):
        return "'" + value
    return value


def csv_text_value(cell: str) -> str:
    """The text `csv_text_cell` wrote (for a package that reads its CSV back)."""
    if cell.startswith("'") and _is_formula(cell[1:]):
        return cell[1:]
    return cell


def mpl_text(value) -> str:
    """`value` as a matplotlib title or label: '$' escaped, so a name with two of them is not
    parsed as mathtext (which raises on an unknown command such as $\\foo$)."""
    return str(value).replace("$", r"\$")
