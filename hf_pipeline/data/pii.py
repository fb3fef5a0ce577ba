"""PII removal for web text: emails, public IP addresses (v4 and v6) and phone numbers, replaced by placeholders.

FineWeb's recipe ends with datatrove's ``PIIFormatter``, which replaces emails and public IPv4 addresses. This module
keeps its behaviour and defaults for those two and adds IPv6 and phone numbers:

* emails: datatrove's regex, with the local part bounded (64 characters, as RFC 5321 says, which also keeps the scan
  linear on long tokens), an alphabetic top-level domain (``pkg@1.2.3`` is not an email) and image/asset names such
  as ``logo@2x.png`` left alone.
* IPv4: datatrove's regex plus boundaries (no piece of ``1.2.3.4.5`` or ``v1.2.3.4``, nothing after "version"), kept
  unless ``ipaddress`` says it is global: private, loopback, link-local, reserved, CGNAT ranges stay, as in datatrove.
  The address alone is taken in its usual text forms: with a port or CIDR suffix (``8.8.8.8:53``, ``8.8.8.8/24``),
  in brackets or quotes, in a URL, after ``IP:``/``ip=``, before a sentence's final period. Left alone: leading zeros
  (``008.008.008.008``, which ``ipaddress`` rejects), an address glued to a word (``ip_8.8.8.8``, ``8.8.8.8.Next``).
* IPv6: any colon-hex token that ``ipaddress`` parses, replaced only when it is global *and* inside 2000::/3 (all
  assigned public unicast space; Python calls e.g. ``12::30`` global, but that is a slice, not an address).
* phones: a few regexes in two tiers (see ``_PHONE``). *Strong* shapes are taken anywhere: a ``+`` country code,
  North American ``(555) 123-4567`` / ``555-123-4567`` / ``555 123 4567`` (with ``1-`` or ``001-`` and ``x123``
  extensions), national numbers with a trunk ``0`` in groups (``0494 92 82 32``, ``01.84.17.61.18``), dashed pairs
  (``60-56-85-91``) and a bracketed area code (``(37) 788-063``). *Weak* shapes (space- or dash-separated groups
  such as ``467 3395`` or ``72 128 827``, bare 10-11 digit runs) are taken only next to a phone word: "phone",
  "tel", "mobile", "fax", "call", "contact", ... up to two words before ("phone number is", "Tel. No.:", "Phone #"),
  a phrase naming someone's number ("my number is", "his home no.", "your #", "my registered"), a verb of reaching
  by phone with "at"/"on" ("reach me at", "text us on", "can be reached at", "not answering at"), or
  "office"/"fax"/"mobile" just after. A number right after ``#`` is weak whatever its shape ("Phone #5403926876" is
  taken, "Order #1234567890" and "Ticket #555-123-4567" are not); "number:" alone, "order/account number" and a bare
  "reached" are no phone words. All candidates must have 7-15 digits (strong ones 8, unless written with ``+`` or a
  bracket) and not look like a date, a year range, a US SSN or an ISBN; digit runs that continue a longer number
  (card numbers, IBANs, IDs) never match part-way. IPv4-shaped dotted groups are never phones.

Matches are resolved emails first, then IPs, then phones (a phone never overlaps an email or IP). Default
placeholders follow datatrove's idea of realistic stand-ins, so that a model trained on the text does not learn a
marker token: datatrove's emails and IPs, and for phones numbers in the 555-0100..555-0199 block that North American
numbering reserves for fiction. Pass e.g. ``phone_replacement="<PHONE>"`` for a marker instead. Each option takes one
string or a tuple used in turn, as in datatrove.

``find_pii`` and ``scrub`` are plain functions (no datatrove objects); ``PIIScrubber`` is the datatrove step, which
counts replacements in its stats as ``pii_email``, ``pii_ip`` and ``pii_phone``.
"""

from __future__ import annotations

import ipaddress
import re

from datatrove.pipeline.formatters.base import BaseFormatter

EMAIL, IP, PHONE = "email", "ip", "phone"
ENTITY_TYPES = (EMAIL, IP, PHONE)
#: the same entities under the names Presidio (and its synthetic evaluation data) uses
PRESIDIO_NAMES = {EMAIL: "EMAIL_ADDRESS", IP: "IP_ADDRESS", PHONE: "PHONE_NUMBER"}

# datatrove's defaults: example.com/org are reserved for examples; the IPs did not answer pings when listed
DEFAULT_EMAIL_REPLACEMENT = ("email@example.com", "firstname.lastname@example.org")
DEFAULT_IP_REPLACEMENT = ("22.214.171.124", "126.96.36.199", "188.8.131.52", "184.108.40.206", "220.127.116.11",
                          "18.104.22.168")
# 555-0100..555-0199 is reserved for fictional use in every North American area code
DEFAULT_PHONE_REPLACEMENT = ("+1-202-555-0143", "(617) 555-0172", "555-0118")

# --- emails -----------------------------------------------------------------------------------------------------
_EMAIL = re.compile(
    r"\b[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,64}(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,64}){0,8}"  # local part (datatrove)
    r"@(?:(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}\b"  # host name, alphabetic TLD
    r"|\[(?:\d{1,3}\.){3}\d{1,3}\])"  # or an address literal: user@[1.2.3.4]
)
_NOT_EMAIL_TLD = {"png", "jpg", "jpeg", "gif", "svg", "webp", "bmp", "ico", "css", "js"}  # icon@2x.png, font@1.css

# --- IP addresses -----------------------------------------------------------------------------------------------
_IPV4 = re.compile(  # datatrove's regex, not inside a longer dotted/alphanumeric token
    r"(?<![\w.])(?:(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)\.){3}(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)(?!\.?\w)"
)
_IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?!\.?[\w:])")  # then ipaddress decides
_VERSION_BEFORE = re.compile(r"(?i)\b(?:version|ver\.?|release|build|firmware)\s*$")
_GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")

# --- phone numbers ----------------------------------------------------------------------------------------------
_SEP = r"[ .\-]"  # one separator between digit groups
_EXT = r"(?:\s?(?:x|ext\.?|extension)\s?\d{1,5})?"  # 345-899-3560x4587, 555-0100 ext. 12
_PHONE = re.compile(
    r"(?<![\w.+/$€£¥-])(?<!\d[ .\-/])"  # start at a number's start: not inside 4007 0707 5369 0781, 1.5, $12
    # (right after "#" a number may start, but _phone_ok then wants a phone word: "Phone #5403926876", not "Order #")
    r"(?:(?P<strong>"
    r"\+\d{1,3}(?:[ .\-]?\(\d{1,4}\))?(?:[ .\-]?\d{1,6}){1,6}"  # +1-984-182-0190, +46 (0)8 928 571 38, +447700 921 916
    r"|(?:(?:\+?1|001)[ .\-]?)?(?:\(\d{3}\)[ .\-]?|\d{3}" + _SEP + r")\d{3}" + _SEP + r"\d{4}"  # NANP: (602)272-9781
    r"|0\d{1,4}(?:[ .\-/]\d{6,8}|(?:[ .\-/]\d{2,4}){2,4})"  # trunk 0: 0494 92 82 32, 01.84.17.61.18, 0961-7596216
    r"|\d\d(?:-\d\d){3,4}"  # dashed pairs: 60-56-85-91
    r"|\(\d{2,4}\)[ .\-]?\d{3,4}" + _SEP + r"\d{3,4}"  # bracketed area code: (37) 788-063, (64) 3591-3246
    r")|(?P<weak>"
    r"\d{2,4}(?:[ \-]\d{2,8}){1,4}"  # grouped digits: 467 3395, 72 128 827, 21 284 698 2548 (context needed)
    r"|\d{10,11}"  # a bare run: 5403926876 (context needed)
    r"))" + _EXT + r"(?![ .\-/:]?\d)"  # and the number ends here (not a time, not a longer number)
)
# A weak candidate is a phone only with one of these words just before it ("Phone:\n", "call me on ",
# "phone number is ", "Tel. No.: ", "contact #") ...
_PHONE_WORD_BEFORE = re.compile(
    r"(?i)\b(?:phone|telephone|tel|tél|mobile|mob|cell|cellphone|fax|call|dial|sms|whatsapp|hotline|desk|contact"
    r"|ph|telefon|teléfono|téléphone)\b\.?(?:\W{1,4}\w+){0,2}\W{1,4}$"
    # ... or a phrase that names a number without a phone word: "my number is ", "his home no. ", "your #", "on my
    # registered " (a registered number *is* a phone: order/account/serial numbers need their noun, so they stay)
    r"|\b(?:my|your|his|her|our|their)\s+(?:(?:home|work|office|direct|private|personal|new|old|other)\s+)?"
    r"(?:number\b|no\.|#)(?:\s+(?:is|was))?\W{0,4}$"
    r"|\b(?:my|your|his|her|our|their)\s+registered\W{1,4}$"
    # ... or a verb of reaching someone by phone with its "at"/"on": "reach me at ", "text us on ", "can be reached
    # at ", "reachable on ", "(not) answering at " (a bare "reach"/"reached" is not enough: "reached 12 345 678")
    r"|\b(?:(?:reach|text|ring|message|ping)\s+(?:me|us|him|her|them)(?:\s+back)?|be\s+reached|reachable"
    r"|answering)\s+(?:at|on)\W{1,4}$"
)
# ... or one of these labels just after it ("416 60 039 office", "(37) 788-063-Office")
_PHONE_WORD_AFTER = re.compile(r"(?i)^\W{1,3}(?:office|fax|mobile|cell|phone|tel|home|work|desk)\b")
_NOT_PHONE = re.compile(
    r"(?:19|20)\d\d[-./ ]\d\d?[-./ ]\d\d?|\d\d?[-./ ]\d\d?[-./ ](?:19|20)\d\d"  # dates: 2021-03-04, 04.03.2021
    r"|(?:19|20)\d\d ?[-–] ?(?:19|20)?\d\d"  # year ranges: 1999-2001
    r"|\d{1,3}(?:\.\d{1,3}){3}"  # IPv4-shaped
    r"|\d{3}-\d\d-\d{4}"  # US social security numbers: 054-28-6917
)
_ISBN_BEFORE = re.compile(r"(?i)\b(?:isbn(?:-1[03])?|issn|doi|pmid|arxiv)\W{0,3}$")


def _email_ok(m: re.Match) -> bool:
    return m.group().rsplit(".", 1)[-1].lower() not in _NOT_EMAIL_TLD


def _ip_ok(text: str, m: re.Match) -> bool:
    try:
        ip = ipaddress.ip_address(m.group())
    except ValueError:
        return False
    if ip.version == 6:
        return ip in _GLOBAL_UNICAST_V6 and ip.is_global
    return ip.is_global and not _VERSION_BEFORE.search(text, max(0, m.start() - 12), m.start())


def _phone_ok(text: str, m: re.Match) -> bool:
    number = m.group("strong") or m.group("weak")
    digits = sum(c.isdigit() for c in number) - number.count("(0)")
    if not 7 <= digits <= 15 or _NOT_PHONE.fullmatch(number) or _ISBN_BEFORE.search(text, max(0, m.start() - 10),
                                                                                      m.start()):
        return False
    if m.group("strong") and text[m.start() - 1:m.start()] != "#":  # "#555-123-4567" is an issue/order number...
        return digits >= 8 or number.startswith(("+", "("))
    # ... unless a phone word says otherwise, as for every weak candidate
    return bool(_PHONE_WORD_BEFORE.search(text, max(0, m.start() - 40), m.start())
                or _PHONE_WORD_AFTER.match(text[m.end():m.end() + 12]))


def find_pii(text: str, emails: bool = True, ips: bool = True, phones: bool = True) -> list[tuple[str, int, int]]:
    """``[(entity_type, start, end), ...]`` sorted by start; types are ``"email"``, ``"ip"``, ``"phone"``.

    Spans never overlap: emails win over IPs, IPs over phones.
    """
    spans: list[tuple[str, int, int]] = []

    def add(kind: str, start: int, end: int) -> None:
        if not any(start < e and s < end for _, s, e in spans):
            spans.append((kind, start, end))

    if emails and "@" in text:
        for m in _EMAIL.finditer(text):
            if _email_ok(m):
                add(EMAIL, m.start(), m.end())
    if ips:
        if "." in text:
            for m in _IPV4.finditer(text):
                if _ip_ok(text, m):
                    add(IP, m.start(), m.end())
        if "::" in text or text.count(":") >= 7:
            for m in _IPV6.finditer(text):
                if _ip_ok(text, m):
                    add(IP, m.start(), m.end())
    if phones:
        for m in _PHONE.finditer(text):
            if _phone_ok(text, m):
                add(PHONE, m.start(), m.end())
    return sorted(spans, key=lambda s: s[1])


def _as_tuple(replacement: tuple[str, ...] | list[str] | str) -> tuple[str, ...]:
    out = (replacement,) if isinstance(replacement, str) else tuple(replacement)
    if not out:
        raise ValueError("a replacement must be a string or a non-empty tuple of strings")
    return out


def _replacement_map(email, ip, phone) -> dict[str, tuple[str, ...]]:
    return {EMAIL: _as_tuple(email), IP: _as_tuple(ip), PHONE: _as_tuple(phone)}


def _replace(text: str, spans, replacements: dict[str, tuple[str, ...]], turns: dict[str, int]):
    """Replace each span by its type's next replacement (in turn, ``turns`` keeps where each type is)."""
    counts = dict.fromkeys(ENTITY_TYPES, 0)
    pieces, last = [], 0
    for kind, start, end in spans:
        options = replacements[kind]
        pieces += [text[last:start], options[turns[kind] % len(options)]]
        turns[kind] = (turns[kind] + 1) % len(options)
        counts[kind] += 1
        last = end
    pieces.append(text[last:])
    return "".join(pieces), counts


def scrub(
    text: str,
    remove_emails: bool = True,
    remove_ips: bool = True,
    remove_phones: bool = True,
    email_replacement: tuple[str, ...] | str = DEFAULT_EMAIL_REPLACEMENT,
    ip_replacement: tuple[str, ...] | str = DEFAULT_IP_REPLACEMENT,
    phone_replacement: tuple[str, ...] | str = DEFAULT_PHONE_REPLACEMENT,
) -> tuple[str, dict[str, int]]:
    """``(scrubbed_text, {"email": n, "ip": n, "phone": n})``; tuple replacements are used in turn."""
    replacements = _replacement_map(email_replacement, ip_replacement, phone_replacement)
    spans = find_pii(text, remove_emails, remove_ips, remove_phones)
    return _replace(text, spans, replacements, dict.fromkeys(ENTITY_TYPES, 0))


class PIIScrubber(BaseFormatter):
    """datatrove step: replaces emails, public IPs (v4 and v6) and phone numbers in ``doc.text``.

    Args:
        remove_emails / remove_ips / remove_phones: which entities to replace.
        email_replacement / ip_replacement / phone_replacement: a string, or a tuple of strings used in turn (across
            documents, like datatrove's ``PIIFormatter``). Defaults: datatrove's for emails and IPs, fictional
            555-01xx numbers for phones.

    Stats: ``pii_email``, ``pii_ip``, ``pii_phone`` (replacements, summed over documents; a document without any of a
    type adds nothing), besides datatrove's ``total`` and ``forwarded``.
    """

    name = "📞 PII scrubber"

    def __init__(
        self,
        remove_emails: bool = True,
        remove_ips: bool = True,
        remove_phones: bool = True,
        email_replacement: tuple[str, ...] | str = DEFAULT_EMAIL_REPLACEMENT,
        ip_replacement: tuple[str, ...] | str = DEFAULT_IP_REPLACEMENT,
        phone_replacement: tuple[str, ...] | str = DEFAULT_PHONE_REPLACEMENT,
    ):
        super().__init__()
        self.remove_emails, self.remove_ips, self.remove_phones = remove_emails, remove_ips, remove_phones
        self.replacements = _replacement_map(email_replacement, ip_replacement, phone_replacement)
        self._turns = dict.fromkeys(ENTITY_TYPES, 0)

    def run(self, data, rank: int = 0, world_size: int = 1):
        for doc in super().run(data, rank, world_size):
            self.stat_update("forwarded")  # documents and characters out, for the data stage's report
            self.update_doc_stats(doc)
            yield doc

    def format(self, text: str) -> str:
        spans = find_pii(text, self.remove_emails, self.remove_ips, self.remove_phones)
        if not spans:
            return text
        text, counts = _replace(text, spans, self.replacements, self._turns)
        for kind, n in counts.items():
            if n:
                self.stat_update(f"pii_{kind}", value=n)
        return text
