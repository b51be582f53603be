"""A1111 prompt editing and alternation: the schedule parser against A1111's own, and per-step conditioning.

``A1111_SCHEDULES`` was produced by AUTOMATIC1111's ``modules/prompt_parser.py``
(``get_learned_conditioning_prompt_schedules``, current scheduling rules, ``hires_steps`` as in 1.10)
run outside this repository with lark 1.1.2 (the version A1111 pins), under several hash seeds; only
prompts whose A1111 schedule does not depend on the hash seed are kept. The prompts are hand-written
tricky cases (the doc-tests of A1111's parser among them) and random nested ones.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from tagloop.a1111.prompt_schedule import has_schedule, prompt_schedule
from tagloop.generator.generate import GenerationSettings, Generator
from tagloop.generator.models import cache_clear
from tagloop.generator.settings import SettingsError
from tagloop.testing import diffusion as tiny

# (prompt, steps, hires_steps, A1111's schedule)
# fmt: off
A1111_SCHEDULES = [
    ('test', 1, None, [(1, 'test')]),
    ('test', 2, None, [(2, 'test')]),
    ('test', 20, None, [(20, 'test')]),
    ('test', 30, None, [(30, 'test')]),
    ('test', 20, 10, [(10, 'test')]),
    ('test', 30, 15, [(15, 'test')]),
    ('a [b:3]', 1, None, [(1, 'a ')]),
    ('a [b:3]', 2, None, [(2, 'a ')]),
    ('a [b:3]', 20, None, [(3, 'a '), (20, 'a b')]),
    ('a [b:3]', 30, None, [(3, 'a '), (30, 'a b')]),
    ('a [b:3]', 20, 10, [(10, 'a b')]),
    ('a [b:3]', 30, 15, [(15, 'a b')]),
    ('a [b: 3]', 1, None, [(1, 'a ')]),
    ('a [b: 3]', 2, None, [(2, 'a ')]),
    ('a [b: 3]', 20, None, [(3, 'a '), (20, 'a b')]),
    ('a [b: 3]', 30, None, [(3, 'a '), (30, 'a b')]),
    ('a [b: 3]', 20, 10, [(10, 'a b')]),
    ('a [b: 3]', 30, 15, [(15, 'a b')]),
    ('a [[[b]]:2]', 1, None, [(1, 'a ')]),
    ('a [[[b]]:2]', 2, None, [(2, 'a ')]),
    ('a [[[b]]:2]', 20, None, [(2, 'a '), (20, 'a [[b]]')]),
    ('a [[[b]]:2]', 30, None, [(2, 'a '), (30, 'a [[b]]')]),
    ('a [[[b]]:2]', 20, 10, [(10, 'a [[b]]')]),
    ('a [[[b]]:2]', 30, 15, [(15, 'a [[b]]')]),
    ('[(a:2):3]', 1, None, [(1, '')]),
    ('[(a:2):3]', 2, None, [(2, '')]),
    ('[(a:2):3]', 20, None, [(3, ''), (20, '(a:2)')]),
    ('[(a:2):3]', 30, None, [(3, ''), (30, '(a:2)')]),
    ('[(a:2):3]', 20, 10, [(10, '(a:2)')]),
    ('[(a:2):3]', 30, 15, [(15, '(a:2)')]),
    ('a [b : c : 1] d', 1, None, [(1, 'a b  d')]),
    ('a [b : c : 1] d', 2, None, [(1, 'a b  d'), (2, 'a  c  d')]),
    ('a [b : c : 1] d', 20, None, [(1, 'a b  d'), (20, 'a  c  d')]),
    ('a [b : c : 1] d', 30, None, [(1, 'a b  d'), (30, 'a  c  d')]),
    ('a [b : c : 1] d', 20, 10, [(10, 'a  c  d')]),
    ('a [b : c : 1] d', 30, 15, [(15, 'a  c  d')]),
    ('a[b:[c:d:2]:1]e', 1, None, [(1, 'abe')]),
    ('a[b:[c:d:2]:1]e', 2, None, [(1, 'abe'), (2, 'ace')]),
    ('a[b:[c:d:2]:1]e', 20, None, [(1, 'abe'), (2, 'ace'), (20, 'ade')]),
    ('a[b:[c:d:2]:1]e', 30, None, [(1, 'abe'), (2, 'ace'), (30, 'ade')]),
    ('a[b:[c:d:2]:1]e', 20, 10, [(10, 'ade')]),
    ('a[b:[c:d:2]:1]e', 30, 15, [(15, 'ade')]),
    ('a [unbalanced', 1, None, [(1, 'a [unbalanced')]),
    ('a [unbalanced', 2, None, [(2, 'a [unbalanced')]),
    ('a [unbalanced', 20, None, [(20, 'a [unbalanced')]),
    ('a [unbalanced', 30, None, [(30, 'a [unbalanced')]),
    ('a [unbalanced', 20, 10, [(10, 'a [unbalanced')]),
    ('a [unbalanced', 30, 15, [(15, 'a [unbalanced')]),
    ('a [b:.5] c', 1, None, [(1, 'a b c')]),
    ('a [b:.5] c', 2, None, [(1, 'a  c'), (2, 'a b c')]),
    ('a [b:.5] c', 20, None, [(10, 'a  c'), (20, 'a b c')]),
    ('a [b:.5] c', 30, None, [(15, 'a  c'), (30, 'a b c')]),
    ('a [b:.5] c', 20, 10, [(10, 'a b c')]),
    ('a [b:.5] c', 30, 15, [(15, 'a b c')]),
    ('((a][:b:c [d:3]', 1, None, [(1, '((a][:b:c ')]),
    ('((a][:b:c [d:3]', 2, None, [(2, '((a][:b:c ')]),
    ('((a][:b:c [d:3]', 20, None, [(3, '((a][:b:c '), (20, '((a][:b:c d')]),
    ('((a][:b:c [d:3]', 30, None, [(3, '((a][:b:c '), (30, '((a][:b:c d')]),
    ('((a][:b:c [d:3]', 20, 10, [(10, '((a][:b:c d')]),
    ('((a][:b:c [d:3]', 30, 15, [(15, '((a][:b:c d')]),
    ('[a|(b:1.1)]', 1, None, [(1, 'a')]),
    ('[a|(b:1.1)]', 2, None, [(1, 'a'), (2, '(b:1.1)')]),
    ('[a|(b:1.1)]', 20, None, [(1, 'a'), (2, '(b:1.1)'), (3, 'a'), (4, '(b:1.1)'), (5, 'a'), (6, '(b:1.1)'), (7, 'a'), (8, '(b:1.1)'), (9, 'a'), (10, '(b:1.1)'), (11, 'a'), (12, '(b:1.1)'), (13, 'a'), (14, '(b:1.1)'), (15, 'a'), (16, '(b:1.1)'), (17, 'a'), (18, '(b:1.1)'), (19, 'a'), (20, '(b:1.1)')]),
    ('[a|(b:1.1)]', 20, 10, [(1, 'a'), (2, '(b:1.1)'), (3, 'a'), (4, '(b:1.1)'), (5, 'a'), (6, '(b:1.1)'), (7, 'a'), (8, '(b:1.1)'), (9, 'a'), (10, '(b:1.1)')]),
    ('[fe|]male', 1, None, [(1, 'female')]),
    ('[fe|]male', 2, None, [(1, 'female'), (2, 'male')]),
    ('[fe|]male', 20, None, [(1, 'female'), (2, 'male'), (3, 'female'), (4, 'male'), (5, 'female'), (6, 'male'), (7, 'female'), (8, 'male'), (9, 'female'), (10, 'male'), (11, 'female'), (12, 'male'), (13, 'female'), (14, 'male'), (15, 'female'), (16, 'male'), (17, 'female'), (18, 'male'), (19, 'female'), (20, 'male')]),
    ('[fe|]male', 20, 10, [(1, 'female'), (2, 'male'), (3, 'female'), (4, 'male'), (5, 'female'), (6, 'male'), (7, 'female'), (8, 'male'), (9, 'female'), (10, 'male')]),
    ('[fe|||]male', 1, None, [(1, 'female')]),
    ('[fe|||]male', 2, None, [(1, 'female'), (2, 'male')]),
    ('[fe|||]male', 20, None, [(1, 'female'), (2, 'male'), (3, 'male'), (4, 'male'), (5, 'female'), (6, 'male'), (7, 'male'), (8, 'male'), (9, 'female'), (10, 'male'), (11, 'male'), (12, 'male'), (13, 'female'), (14, 'male'), (15, 'male'), (16, 'male'), (17, 'female'), (18, 'male'), (19, 'male'), (20, 'male')]),
    ('[fe|||]male', 20, 10, [(1, 'female'), (2, 'male'), (3, 'male'), (4, 'male'), (5, 'female'), (6, 'male'), (7, 'male'), (8, 'male'), (9, 'female'), (10, 'male')]),
    ('fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75][ in foreground::0.6][ in background:0.25] [shoddy:masterful:0.5]', 1, None, [(1, 'fantasy landscape with a lake and a christmas tree in background masterful')]),
    ('fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75][ in foreground::0.6][ in background:0.25] [shoddy:masterful:0.5]', 2, None, [(1, 'fantasy landscape with a lake and an oak in foreground in background shoddy'), (2, 'fantasy landscape with a lake and a christmas tree in background masterful')]),
    ('fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75][ in foreground::0.6][ in background:0.25] [shoddy:masterful:0.5]', 20, None, [(5, 'fantasy landscape with a mountain and an oak in foreground shoddy'), (10, 'fantasy landscape with a lake and an oak in foreground in background shoddy'), (12, 'fantasy landscape with a lake and an oak in foreground in background masterful'), (15, 'fantasy landscape with a lake and an oak in background masterful'), (20, 'fantasy landscape with a lake and a christmas tree in background masterful')]),
    ('fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75][ in foreground::0.6][ in background:0.25] [shoddy:masterful:0.5]', 30, None, [(7, 'fantasy landscape with a mountain and an oak in foreground shoddy'), (15, 'fantasy landscape with a lake and an oak in foreground in background shoddy'), (18, 'fantasy landscape with a lake and an oak in foreground in background masterful'), (22, 'fantasy landscape with a lake and an oak in background masterful'), (30, 'fantasy landscape with a lake and a christmas tree in background masterful')]),
    ('fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75][ in foreground::0.6][ in background:0.25] [shoddy:masterful:0.5]', 20, 10, [(10, 'fantasy landscape with a lake and a christmas tree in background masterful')]),
    ('fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75][ in foreground::0.6][ in background:0.25] [shoddy:masterful:0.5]', 30, 15, [(15, 'fantasy landscape with a lake and a christmas tree in background masterful')]),
    ('[cat:dog:0]', 1, None, [(1, 'dog')]),
    ('[cat:dog:0]', 2, None, [(2, 'dog')]),
    ('[cat:dog:0]', 20, None, [(20, 'dog')]),
    ('[cat:dog:0]', 30, None, [(30, 'dog')]),
    ('[cat:dog:0]', 20, 10, [(10, 'dog')]),
    ('[cat:dog:0]', 30, 15, [(15, 'dog')]),
    ('[cat:dog:0.0]', 1, None, [(1, 'dog')]),
    ('[cat:dog:0.0]', 2, None, [(2, 'dog')]),
    ('[cat:dog:0.0]', 20, None, [(20, 'dog')]),
    ('[cat:dog:0.0]', 30, None, [(30, 'dog')]),
    ('[cat:dog:0.0]', 20, 10, [(10, 'dog')]),
    ('[cat:dog:0.0]', 30, 15, [(15, 'dog')]),
    ('[cat:dog:1.0]', 1, None, [(1, 'cat')]),
    ('[cat:dog:1.0]', 2, None, [(2, 'cat')]),
    ('[cat:dog:1.0]', 20, None, [(20, 'cat')]),
    ('[cat:dog:1.0]', 30, None, [(30, 'cat')]),
    ('[cat:dog:1.0]', 20, 10, [(10, 'dog')]),
    ('[cat:dog:1.0]', 30, 15, [(15, 'dog')]),
    ('[cat:dog:1]', 1, None, [(1, 'cat')]),
    ('[cat:dog:1]', 2, None, [(1, 'cat'), (2, 'dog')]),
    ('[cat:dog:1]', 20, None, [(1, 'cat'), (20, 'dog')]),
    ('[cat:dog:1]', 30, None, [(1, 'cat'), (30, 'dog')]),
    ('[cat:dog:1]', 20, 10, [(10, 'dog')]),
    ('[cat:dog:1]', 30, 15, [(15, 'dog')]),
    ('[cat:dog:30]', 1, None, [(1, 'cat')]),
    ('[cat:dog:30]', 2, None, [(2, 'cat')]),
    ('[cat:dog:30]', 20, None, [(20, 'cat')]),
    ('[cat:dog:30]', 30, None, [(30, 'cat')]),
    ('[cat:dog:30]', 20, 10, [(10, 'cat')]),
    ('[cat:dog:30]', 30, 15, [(15, 'dog')]),
    ('[cat:dog:-1]', 1, None, [(1, 'dog')]),
    ('[cat:dog:-1]', 2, None, [(2, 'dog')]),
    ('[cat:dog:-1]', 20, None, [(20, 'dog')]),
    ('[cat:dog:-1]', 30, None, [(30, 'dog')]),
    ('[cat:dog:-1]', 20, 10, [(10, 'dog')]),
    ('[cat:dog:-1]', 30, 15, [(15, 'dog')]),
    ('[cat:dog:1e1]', 1, None, [(1, 'cat')]),
    ('[cat:dog:1e1]', 2, None, [(2, 'cat')]),
    ('[cat:dog:1e1]', 20, None, [(10, 'cat'), (20, 'dog')]),
    ('[cat:dog:1e1]', 30, None, [(10, 'cat'), (30, 'dog')]),
    ('[cat:dog:1e1]', 20, 10, [(10, 'dog')]),
    ('[cat:dog:1e1]', 30, 15, [(15, 'dog')]),
    ('[cat:dog:+2]', 1, None, [(1, 'cat')]),
    ('[cat:dog:+2]', 2, None, [(2, 'cat')]),
    ('[cat:dog:+2]', 20, None, [(2, 'cat'), (20, 'dog')]),
    ('[cat:dog:+2]', 30, None, [(2, 'cat'), (30, 'dog')]),
    ('[cat:dog:+2]', 20, 10, [(10, 'dog')]),
    ('[cat:dog:+2]', 30, 15, [(15, 'dog')]),
    ('[cat:dog:2 ]', 1, None, [(1, 'cat')]),
    ('[cat:dog:2 ]', 2, None, [(2, 'cat')]),
    ('[cat:dog:2 ]', 20, None, [(2, 'cat'), (20, 'dog')]),
    ('[cat:dog:2 ]', 30, None, [(2, 'cat'), (30, 'dog')]),
    ('[cat:dog:2 ]', 20, 10, [(10, 'dog')]),
    ('[cat:dog:2 ]', 30, 15, [(15, 'dog')]),
    ('[cat:dog:0.3]', 1, None, [(1, 'dog')]),
    ('[cat:dog:0.3]', 2, None, [(2, 'dog')]),
    ('[cat:dog:0.3]', 20, None, [(6, 'cat'), (20, 'dog')]),
    ('[cat:dog:0.3]', 30, None, [(9, 'cat'), (30, 'dog')]),
    ('[cat:dog:0.3]', 20, 10, [(10, 'dog')]),
    ('[cat:dog:0.3]', 30, 15, [(15, 'dog')]),
    ('[cat:dog:0.29]', 1, None, [(1, 'dog')]),
    ('[cat:dog:0.29]', 2, None, [(2, 'dog')]),
    ('[cat:dog:0.29]', 20, None, [(5, 'cat'), (20, 'dog')]),
    ('[cat:dog:0.29]', 30, None, [(8, 'cat'), (30, 'dog')]),
    ('[cat:dog:0.29]', 20, 10, [(10, 'dog')]),
    ('[cat:dog:0.29]', 30, 15, [(15, 'dog')]),
    ('[cat:dog:1.5]', 1, None, [(1, 'cat')]),
    ('[cat:dog:1.5]', 2, None, [(2, 'cat')]),
    ('[cat:dog:1.5]', 20, None, [(20, 'cat')]),
    ('[cat:dog:1.5]', 30, None, [(30, 'cat')]),
    ('[cat:dog:1.5]', 20, 10, [(5, 'cat'), (10, 'dog')]),
    ('[cat:dog:1.5]', 30, 15, [(7, 'cat'), (15, 'dog')]),
    ('[cat:dog:25]', 1, None, [(1, 'cat')]),
    ('[cat:dog:25]', 2, None, [(2, 'cat')]),
    ('[cat:dog:25]', 20, None, [(20, 'cat')]),
    ('[cat:dog:25]', 30, None, [(25, 'cat'), (30, 'dog')]),
    ('[cat:dog:25]', 20, 10, [(5, 'cat'), (10, 'dog')]),
    ('[cat:dog:25]', 30, 15, [(15, 'dog')]),
    ('\\[cat:dog:2\\]', 1, None, [(1, '\\[cat:dog:2\\]')]),
    ('\\[cat:dog:2\\]', 2, None, [(2, '\\[cat:dog:2\\]')]),
    ('\\[cat:dog:2\\]', 20, None, [(20, '\\[cat:dog:2\\]')]),
    ('\\[cat:dog:2\\]', 30, None, [(30, '\\[cat:dog:2\\]')]),
    ('\\[cat:dog:2\\]', 20, 10, [(10, '\\[cat:dog:2\\]')]),
    ('\\[cat:dog:2\\]', 30, 15, [(15, '\\[cat:dog:2\\]')]),
    ('[cat\\:x:dog:2]', 1, None, [(1, 'cat\\:x')]),
    ('[cat\\:x:dog:2]', 2, None, [(2, 'cat\\:x')]),
    ('[cat\\:x:dog:2]', 20, None, [(2, 'cat\\:x'), (20, 'dog')]),
    ('[cat\\:x:dog:2]', 30, None, [(2, 'cat\\:x'), (30, 'dog')]),
    ('[cat\\:x:dog:2]', 20, 10, [(10, 'dog')]),
    ('[cat\\:x:dog:2]', 30, 15, [(15, 'dog')]),
    ('[a\\:b:3]', 1, None, [(1, '')]),
    ('[a\\:b:3]', 2, None, [(2, '')]),
    ('[a\\:b:3]', 20, None, [(3, ''), (20, 'a\\:b')]),
    ('[a\\:b:3]', 30, None, [(3, ''), (30, 'a\\:b')]),
    ('[a\\:b:3]', 20, 10, [(10, 'a\\:b')]),
    ('[a\\:b:3]', 30, 15, [(15, 'a\\:b')]),
    ('[(red:1.2) hair:blue hair:0.5]', 1, None, [(1, 'blue hair')]),
    ('[(red:1.2) hair:blue hair:0.5]', 2, None, [(1, '(red:1.2) hair'), (2, 'blue hair')]),
    ('[(red:1.2) hair:blue hair:0.5]', 20, None, [(10, '(red:1.2) hair'), (20, 'blue hair')]),
    ('[(red:1.2) hair:blue hair:0.5]', 30, None, [(15, '(red:1.2) hair'), (30, 'blue hair')]),
    ('[(red:1.2) hair:blue hair:0.5]', 20, 10, [(10, 'blue hair')]),
    ('[(red:1.2) hair:blue hair:0.5]', 30, 15, [(15, 'blue hair')]),
    ('1girl, [smile|frown], (masterpiece:1.2)', 1, None, [(1, '1girl, smile, (masterpiece:1.2)')]),
    ('1girl, [smile|frown], (masterpiece:1.2)', 2, None, [(1, '1girl, smile, (masterpiece:1.2)'), (2, '1girl, frown, (masterpiece:1.2)')]),
    ('1girl, [smile|frown], (masterpiece:1.2)', 20, None, [(1, '1girl, smile, (masterpiece:1.2)'), (2, '1girl, frown, (masterpiece:1.2)'), (3, '1girl, smile, (masterpiece:1.2)'), (4, '1girl, frown, (masterpiece:1.2)'), (5, '1girl, smile, (masterpiece:1.2)'), (6, '1girl, frown, (masterpiece:1.2)'), (7, '1girl, smile, (masterpiece:1.2)'), (8, '1girl, frown, (masterpiece:1.2)'), (9, '1girl, smile, (masterpiece:1.2)'), (10, '1girl, frown, (masterpiece:1.2)'), (11, '1girl, smile, (masterpiece:1.2)'), (12, '1girl, frown, (masterpiece:1.2)'), (13, '1girl, smile, (masterpiece:1.2)'), (14, '1girl, frown, (masterpiece:1.2)'), (15, '1girl, smile, (masterpiece:1.2)'), (16, '1girl, frown, (masterpiece:1.2)'), (17, '1girl, smile, (masterpiece:1.2)'), (18, '1girl, frown, (masterpiece:1.2)'), (19, '1girl, smile, (masterpiece:1.2)'), (20, '1girl, frown, (masterpiece:1.2)')]),
    ('1girl, [smile|frown], (masterpiece:1.2)', 20, 10, [(1, '1girl, smile, (masterpiece:1.2)'), (2, '1girl, frown, (masterpiece:1.2)'), (3, '1girl, smile, (masterpiece:1.2)'), (4, '1girl, frown, (masterpiece:1.2)'), (5, '1girl, smile, (masterpiece:1.2)'), (6, '1girl, frown, (masterpiece:1.2)'), (7, '1girl, smile, (masterpiece:1.2)'), (8, '1girl, frown, (masterpiece:1.2)'), (9, '1girl, smile, (masterpiece:1.2)'), (10, '1girl, frown, (masterpiece:1.2)')]),
    ('[a|[b|c]]', 1, None, [(1, 'a')]),
    ('[a|[b|c]]', 2, None, [(1, 'a'), (2, 'c')]),
    ('[a|[b|c]]', 20, None, [(1, 'a'), (2, 'c'), (3, 'a'), (4, 'c'), (5, 'a'), (6, 'c'), (7, 'a'), (8, 'c'), (9, 'a'), (10, 'c'), (11, 'a'), (12, 'c'), (13, 'a'), (14, 'c'), (15, 'a'), (16, 'c'), (17, 'a'), (18, 'c'), (19, 'a'), (20, 'c')]),
    ('[a|[b|c]]', 20, 10, [(1, 'a'), (2, 'c'), (3, 'a'), (4, 'c'), (5, 'a'), (6, 'c'), (7, 'a'), (8, 'c'), (9, 'a'), (10, 'c')]),
    ('[[a|b]:[c|d]:0.5]', 1, None, [(1, 'c')]),
    ('[[a|b]:[c|d]:0.5]', 2, None, [(1, 'a'), (2, 'd')]),
    ('[[a|b]:[c|d]:0.5]', 20, None, [(1, 'a'), (2, 'b'), (3, 'a'), (4, 'b'), (5, 'a'), (6, 'b'), (7, 'a'), (8, 'b'), (9, 'a'), (10, 'b'), (11, 'c'), (12, 'd'), (13, 'c'), (14, 'd'), (15, 'c'), (16, 'd'), (17, 'c'), (18, 'd'), (19, 'c'), (20, 'd')]),
    ('[[a|b]:[c|d]:0.5]', 20, 10, [(1, 'c'), (2, 'd'), (3, 'c'), (4, 'd'), (5, 'c'), (6, 'd'), (7, 'c'), (8, 'd'), (9, 'c'), (10, 'd')]),
    ('[a:b:c:3]', 1, None, [(1, '[a:b:c:3]')]),
    ('[a:b:c:3]', 2, None, [(2, '[a:b:c:3]')]),
    ('[a:b:c:3]', 20, None, [(20, '[a:b:c:3]')]),
    ('[a:b:c:3]', 30, None, [(30, '[a:b:c:3]')]),
    ('[a:b:c:3]', 20, 10, [(10, '[a:b:c:3]')]),
    ('[a:b:c:3]', 30, 15, [(15, '[a:b:c:3]')]),
    ('[a|b:1]', 1, None, [(1, '[a|b:1]')]),
    ('[a|b:1]', 2, None, [(2, '[a|b:1]')]),
    ('[a|b:1]', 20, None, [(20, '[a|b:1]')]),
    ('[a|b:1]', 30, None, [(30, '[a|b:1]')]),
    ('[a|b:1]', 20, 10, [(10, '[a|b:1]')]),
    ('[a|b:1]', 30, 15, [(15, '[a|b:1]')]),
    ('a | b [c:3]', 1, None, [(1, 'a | b [c:3]')]),
    ('a | b [c:3]', 2, None, [(2, 'a | b [c:3]')]),
    ('a | b [c:3]', 20, None, [(20, 'a | b [c:3]')]),
    ('a | b [c:3]', 30, None, [(30, 'a | b [c:3]')]),
    ('a | b [c:3]', 20, 10, [(10, 'a | b [c:3]')]),
    ('a | b [c:3]', 30, 15, [(15, 'a | b [c:3]')]),
    ('x\\', 1, None, [(1, 'x\\')]),
    ('x\\', 2, None, [(2, 'x\\')]),
    ('x\\', 20, None, [(20, 'x\\')]),
    ('x\\', 30, None, [(30, 'x\\')]),
    ('x\\', 20, 10, [(10, 'x\\')]),
    ('x\\', 30, 15, [(15, 'x\\')]),
    ('[[a:1]', 1, None, [(1, '[')]),
    ('[[a:1]', 2, None, [(1, '['), (2, '[a')]),
    ('[[a:1]', 20, None, [(1, '['), (20, '[a')]),
    ('[[a:1]', 30, None, [(1, '['), (30, '[a')]),
    ('[[a:1]', 20, 10, [(10, '[a')]),
    ('[[a:1]', 30, 15, [(15, '[a')]),
    ('(a [b:1]', 1, None, [(1, '(a ')]),
    ('(a [b:1]', 2, None, [(1, '(a '), (2, '(a b')]),
    ('(a [b:1]', 20, None, [(1, '(a '), (20, '(a b')]),
    ('(a [b:1]', 30, None, [(1, '(a '), (30, '(a b')]),
    ('(a [b:1]', 20, 10, [(10, '(a b')]),
    ('(a [b:1]', 30, 15, [(15, '(a b')]),
    ('[:b:1]', 1, None, [(1, '')]),
    ('[:b:1]', 2, None, [(1, ''), (2, 'b')]),
    ('[:b:1]', 20, None, [(1, ''), (20, 'b')]),
    ('[:b:1]', 30, None, [(1, ''), (30, 'b')]),
    ('[:b:1]', 20, 10, [(10, 'b')]),
    ('[:b:1]', 30, 15, [(15, 'b')]),
    ('[a::1]', 1, None, [(1, 'a')]),
    ('[a::1]', 2, None, [(1, 'a'), (2, '')]),
    ('[a::1]', 20, None, [(1, 'a'), (20, '')]),
    ('[a::1]', 30, None, [(1, 'a'), (30, '')]),
    ('[a::1]', 20, 10, [(10, '')]),
    ('[a::1]', 30, 15, [(15, '')]),
    ('[::1]', 1, None, [(1, '')]),
    ('[::1]', 2, None, [(1, ''), (2, '')]),
    ('[::1]', 20, None, [(1, ''), (20, '')]),
    ('[::1]', 30, None, [(1, ''), (30, '')]),
    ('[::1]', 20, 10, [(10, '')]),
    ('[::1]', 30, 15, [(15, '')]),
    ('[|a]', 1, None, [(1, '')]),
    ('[|a]', 2, None, [(1, ''), (2, 'a')]),
    ('[|a]', 20, None, [(1, ''), (2, 'a'), (3, ''), (4, 'a'), (5, ''), (6, 'a'), (7, ''), (8, 'a'), (9, ''), (10, 'a'), (11, ''), (12, 'a'), (13, ''), (14, 'a'), (15, ''), (16, 'a'), (17, ''), (18, 'a'), (19, ''), (20, 'a')]),
    ('[|a]', 20, 10, [(1, ''), (2, 'a'), (3, ''), (4, 'a'), (5, ''), (6, 'a'), (7, ''), (8, 'a'), (9, ''), (10, 'a')]),
    ('[a|]', 1, None, [(1, 'a')]),
    ('[a|]', 2, None, [(1, 'a'), (2, '')]),
    ('[a|]', 20, None, [(1, 'a'), (2, ''), (3, 'a'), (4, ''), (5, 'a'), (6, ''), (7, 'a'), (8, ''), (9, 'a'), (10, ''), (11, 'a'), (12, ''), (13, 'a'), (14, ''), (15, 'a'), (16, ''), (17, 'a'), (18, ''), (19, 'a'), (20, '')]),
    ('[a|]', 20, 10, [(1, 'a'), (2, ''), (3, 'a'), (4, ''), (5, 'a'), (6, ''), (7, 'a'), (8, ''), (9, 'a'), (10, '')]),
    ('[]', 1, None, [(1, '[]')]),
    ('[]', 2, None, [(2, '[]')]),
    ('[]', 20, None, [(20, '[]')]),
    ('[]', 30, None, [(30, '[]')]),
    ('[]', 20, 10, [(10, '[]')]),
    ('[]', 30, 15, [(15, '[]')]),
    ('()', 1, None, [(1, '()')]),
    ('()', 2, None, [(2, '()')]),
    ('()', 20, None, [(20, '()')]),
    ('()', 30, None, [(30, '()')]),
    ('()', 20, 10, [(10, '()')]),
    ('()', 30, 15, [(15, '()')]),
    ('[a [b:1]:2]', 1, None, [(1, '')]),
    ('[a [b:1]:2]', 2, None, [(1, ''), (2, '')]),
    ('[a [b:1]:2]', 20, None, [(1, ''), (2, ''), (20, 'a b')]),
    ('[a [b:1]:2]', 30, None, [(1, ''), (2, ''), (30, 'a b')]),
    ('[a [b:1]:2]', 20, 10, [(10, 'a b')]),
    ('[a [b:1]:2]', 30, 15, [(15, 'a b')]),
    ('(x:1.2) [a:b:0.5] (y)', 1, None, [(1, '(x:1.2) b (y)')]),
    ('(x:1.2) [a:b:0.5] (y)', 2, None, [(1, '(x:1.2) a (y)'), (2, '(x:1.2) b (y)')]),
    ('(x:1.2) [a:b:0.5] (y)', 20, None, [(10, '(x:1.2) a (y)'), (20, '(x:1.2) b (y)')]),
    ('(x:1.2) [a:b:0.5] (y)', 30, None, [(15, '(x:1.2) a (y)'), (30, '(x:1.2) b (y)')]),
    ('(x:1.2) [a:b:0.5] (y)', 20, 10, [(10, '(x:1.2) b (y)')]),
    ('(x:1.2) [a:b:0.5] (y)', 30, 15, [(15, '(x:1.2) b (y)')]),
    ('[a:b:1.]', 1, None, [(1, 'a')]),
    ('[a:b:1.]', 2, None, [(2, 'a')]),
    ('[a:b:1.]', 20, None, [(20, 'a')]),
    ('[a:b:1.]', 30, None, [(30, 'a')]),
    ('[a:b:1.]', 20, 10, [(10, 'b')]),
    ('[a:b:1.]', 30, 15, [(15, 'b')]),
    ('line one\n[a:b:2]\nline two', 1, None, [(1, 'line one\na\nline two')]),
    ('line one\n[a:b:2]\nline two', 2, None, [(2, 'line one\na\nline two')]),
    ('line one\n[a:b:2]\nline two', 20, None, [(2, 'line one\na\nline two'), (20, 'line one\nb\nline two')]),
    ('line one\n[a:b:2]\nline two', 30, None, [(2, 'line one\na\nline two'), (30, 'line one\nb\nline two')]),
    ('line one\n[a:b:2]\nline two', 20, 10, [(10, 'line one\nb\nline two')]),
    ('line one\n[a:b:2]\nline two', 30, 15, [(15, 'line one\nb\nline two')]),
    ('[a:b:\t2\t]', 1, None, [(1, 'a')]),
    ('[a:b:\t2\t]', 2, None, [(2, 'a')]),
    ('[a:b:\t2\t]', 20, None, [(2, 'a'), (20, 'b')]),
    ('[a:b:\t2\t]', 30, None, [(2, 'a'), (30, 'b')]),
    ('[a:b:\t2\t]', 20, 10, [(10, 'b')]),
    ('[a:b:\t2\t]', 30, 15, [(15, 'b')]),
    ('BREAK [a:b:2] BREAK', 1, None, [(1, 'BREAK a BREAK')]),
    ('BREAK [a:b:2] BREAK', 2, None, [(2, 'BREAK a BREAK')]),
    ('BREAK [a:b:2] BREAK', 20, None, [(2, 'BREAK a BREAK'), (20, 'BREAK b BREAK')]),
    ('BREAK [a:b:2] BREAK', 30, None, [(2, 'BREAK a BREAK'), (30, 'BREAK b BREAK')]),
    ('BREAK [a:b:2] BREAK', 20, 10, [(10, 'BREAK b BREAK')]),
    ('BREAK [a:b:2] BREAK', 30, 15, [(15, 'BREAK b BREAK')]),
    ('\\[s\\]', 1, None, [(1, '\\[s\\]')]),
    ('\\[s\\]', 2, None, [(2, '\\[s\\]')]),
    ('\\[s\\]', 20, None, [(20, '\\[s\\]')]),
    ('\\[s\\]', 30, None, [(30, '\\[s\\]')]),
    ('\\[s\\]', 20, 10, [(10, '\\[s\\]')]),
    ('\\[s\\]', 30, 15, [(15, '\\[s\\]')]),
    ('[\\[s\\]][[cat|cat]:[1::10]:-1]', 1, None, [(1, '[\\[s\\]]1')]),
    ('[\\[s\\]][[cat|cat]:[1::10]:-1]', 2, None, [(1, '[\\[s\\]]1'), (2, '[\\[s\\]]1')]),
    ('[\\[s\\]][[cat|cat]:[1::10]:-1]', 20, None, [(1, '[\\[s\\]]1'), (2, '[\\[s\\]]1'), (3, '[\\[s\\]]1'), (4, '[\\[s\\]]1'), (5, '[\\[s\\]]1'), (6, '[\\[s\\]]1'), (7, '[\\[s\\]]1'), (8, '[\\[s\\]]1'), (9, '[\\[s\\]]1'), (10, '[\\[s\\]]1'), (11, '[\\[s\\]]'), (12, '[\\[s\\]]'), (13, '[\\[s\\]]'), (14, '[\\[s\\]]'), (15, '[\\[s\\]]'), (16, '[\\[s\\]]'), (17, '[\\[s\\]]'), (18, '[\\[s\\]]'), (19, '[\\[s\\]]'), (20, '[\\[s\\]]')]),
    ('[\\[s\\]][[cat|cat]:[1::10]:-1]', 20, 10, [(1, '[\\[s\\]]'), (2, '[\\[s\\]]'), (3, '[\\[s\\]]'), (4, '[\\[s\\]]'), (5, '[\\[s\\]]'), (6, '[\\[s\\]]'), (7, '[\\[s\\]]'), (8, '[\\[s\\]]'), (9, '[\\[s\\]]'), (10, '[\\[s\\]]')]),
    ('[([(big)::1] )::2]', 1, None, [(1, '((big) )')]),
    ('[([(big)::1] )::2]', 2, None, [(1, '((big) )'), (2, '( )')]),
    ('[([(big)::1] )::2]', 20, None, [(1, '((big) )'), (2, '( )'), (20, '')]),
    ('[([(big)::1] )::2]', 30, None, [(1, '((big) )'), (2, '( )'), (30, '')]),
    ('[([(big)::1] )::2]', 20, 10, [(10, '')]),
    ('[([(big)::1] )::2]', 30, 15, [(15, '')]),
    ('[[[[dog(red:1.2):10]]::0.5]::0.5]', 1, None, [(1, '')]),
    ('[[[[dog(red:1.2):10]]::0.5]::0.5]', 2, None, [(1, '[]'), (2, '')]),
    ('[[[[dog(red:1.2):10]]::0.5]::0.5]', 20, None, [(10, '[]'), (20, '')]),
    ('[[[[dog(red:1.2):10]]::0.5]::0.5]', 30, None, [(10, '[]'), (15, '[dog(red:1.2)]'), (30, '')]),
    ('[[[[dog(red:1.2):10]]::0.5]::0.5]', 20, 10, [(10, '')]),
    ('[[[[dog(red:1.2):10]]::0.5]::0.5]', 30, 15, [(15, '')]),
    ('[a||[[[\\[s\\]|]::-1]:0.5]]', 1, None, [(1, 'a')]),
    ('[a||[[[\\[s\\]|]::-1]:0.5]]', 2, None, [(1, 'a'), (2, '')]),
    ('[a||[[[\\[s\\]|]::-1]:0.5]]', 20, None, [(1, 'a'), (2, ''), (3, ''), (4, 'a'), (5, ''), (6, ''), (7, 'a'), (8, ''), (9, ''), (10, 'a'), (11, ''), (12, ''), (13, 'a'), (14, ''), (15, ''), (16, 'a'), (17, ''), (18, ''), (19, 'a'), (20, '')]),
    ('[a||[[[\\[s\\]|]::-1]:0.5]]', 20, 10, [(1, 'a'), (2, ''), (3, ''), (4, 'a'), (5, ''), (6, ''), (7, 'a'), (8, ''), (9, ''), (10, 'a')]),
    ('dog[b::0.25][a:[cat||x y][bdog(big):0.0]:10]1', 1, None, [(1, 'doga1')]),
    ('dog[b::0.25][a:[cat||x y][bdog(big):0.0]:10]1', 2, None, [(1, 'doga1'), (2, 'doga1')]),
    ('dog[b::0.25][a:[cat||x y][bdog(big):0.0]:10]1', 20, None, [(1, 'dogba1'), (2, 'dogba1'), (3, 'dogba1'), (4, 'dogba1'), (5, 'dogba1'), (6, 'doga1'), (7, 'doga1'), (8, 'doga1'), (9, 'doga1'), (10, 'doga1'), (11, 'dogbdog(big)1'), (12, 'dogx ybdog(big)1'), (13, 'dogcatbdog(big)1'), (14, 'dogbdog(big)1'), (15, 'dogx ybdog(big)1'), (16, 'dogcatbdog(big)1'), (17, 'dogbdog(big)1'), (18, 'dogx ybdog(big)1'), (19, 'dogcatbdog(big)1'), (20, 'dogbdog(big)1')]),
    ('dog[b::0.25][a:[cat||x y][bdog(big):0.0]:10]1', 20, 10, [(1, 'dogcatbdog(big)1'), (2, 'dogbdog(big)1'), (3, 'dogx ybdog(big)1'), (4, 'dogcatbdog(big)1'), (5, 'dogbdog(big)1'), (6, 'dogx ybdog(big)1'), (7, 'dogcatbdog(big)1'), (8, 'dogbdog(big)1'), (9, 'dogx ybdog(big)1'), (10, 'dogcatbdog(big)1')]),
    ('[a:3]', 1, None, [(1, '')]),
    ('[a:3]', 2, None, [(2, '')]),
    ('[a:3]', 20, None, [(3, ''), (20, 'a')]),
    ('[a:3]', 30, None, [(3, ''), (30, 'a')]),
    ('[a:3]', 20, 10, [(10, 'a')]),
    ('[a:3]', 30, 15, [(15, 'a')]),
    ('[([[1::0] [ ||1]:0.5]dog([a: \\[s\\]:0.5][::0.5][x y::3]))|[([cat\\[s\\]:10])[[x y::2 ]:dog:0.25][[]:\\[s\\][dog1]:1.0]:.7]]', 1, None, [(1, '(  dog( \\[s\\]x y))')]),
    ('[([[1::0] [ ||1]:0.5]dog([a: \\[s\\]:0.5][::0.5][x y::3]))|[([cat\\[s\\]:10])[[x y::2 ]:dog:0.25][[]:\\[s\\][dog1]:1.0]:.7]]', 2, None, [(1, '(dog(ax y))'), (2, '()dog[]')]),
    ('[([[1::0] [ ||1]:0.5]dog([a: \\[s\\]:0.5][::0.5][x y::3]))|[([cat\\[s\\]:10])[[x y::2 ]:dog:0.25][[]:\\[s\\][dog1]:1.0]:.7]]', 20, None, [(1, '(dog(ax y))'), (2, ''), (3, '(dog(ax y))'), (4, ''), (5, '(dog(a))'), (6, ''), (7, '(dog(a))'), (8, ''), (9, '(dog(a))'), (10, ''), (11, '( dog( \\[s\\]))'), (12, ''), (13, '(  dog( \\[s\\]))'), (14, ''), (15, '( 1dog( \\[s\\]))'), (16, '(cat\\[s\\])dog[]'), (17, '( dog( \\[s\\]))'), (18, '(cat\\[s\\])dog[]'), (19, '(  dog( \\[s\\]))'), (20, '(cat\\[s\\])dog[]')]),
    ('[([[1::0] [ ||1]:0.5]dog([a: \\[s\\]:0.5][::0.5][x y::3]))|[([cat\\[s\\]:10])[[x y::2 ]:dog:0.25][[]:\\[s\\][dog1]:1.0]:.7]]', 20, 10, [(1, '(  dog( \\[s\\]))'), (2, '(cat\\[s\\])dog\\[s\\][dog1]'), (3, '( 1dog( \\[s\\]))'), (4, '(cat\\[s\\])dog\\[s\\][dog1]'), (5, '( dog( \\[s\\]))'), (6, '(cat\\[s\\])dog\\[s\\][dog1]'), (7, '(  dog( \\[s\\]))'), (8, '(cat\\[s\\])dog\\[s\\][dog1]'), (9, '( 1dog( \\[s\\]))'), (10, '(cat\\[s\\])dog\\[s\\][dog1]')]),
    ('[[[[(big):1: 2]:(a):0]:[x y::-1]:2 ]:cat[(big)::0]:0.25]', 1, None, [(1, 'cat')]),
    ('[[[[(big):1: 2]:(a):0]:[x y::-1]:2 ]:cat[(big)::0]:0.25]', 2, None, [(2, 'cat')]),
    ('[[[[(big):1: 2]:(a):0]:[x y::-1]:2 ]:cat[(big)::0]:0.25]', 20, None, [(2, '(a)'), (5, ''), (20, 'cat')]),
    ('[[[[(big):1: 2]:(a):0]:[x y::-1]:2 ]:cat[(big)::0]:0.25]', 30, None, [(2, '(a)'), (7, ''), (30, 'cat')]),
    ('[[[[(big):1: 2]:(a):0]:[x y::-1]:2 ]:cat[(big)::0]:0.25]', 20, 10, [(10, 'cat')]),
    ('[[[[(big):1: 2]:(a):0]:[x y::-1]:2 ]:cat[(big)::0]:0.25]', 30, 15, [(15, 'cat')]),
    ('[(big)|[[dog:(big):10][ :(red:1.2):0.25][x y|cat|(red:1.2)]::0]|(red:1.2)]', 1, None, [(1, '(big)')]),
    ('[(big)|[[dog:(big):10][ :(red:1.2):0.25][x y|cat|(red:1.2)]::0]|(red:1.2)]', 2, None, [(1, '(big)'), (2, '')]),
    ('[(big)|[[dog:(big):10][ :(red:1.2):0.25][x y|cat|(red:1.2)]::0]|(red:1.2)]', 20, None, [(1, '(big)'), (2, ''), (3, '(red:1.2)'), (4, '(big)'), (5, ''), (6, '(red:1.2)'), (7, '(big)'), (8, ''), (9, '(red:1.2)'), (10, '(big)'), (11, ''), (12, '(red:1.2)'), (13, '(big)'), (14, ''), (15, '(red:1.2)'), (16, '(big)'), (17, ''), (18, '(red:1.2)'), (19, '(big)'), (20, '')]),
    ('[(big)|[[dog:(big):10][ :(red:1.2):0.25][x y|cat|(red:1.2)]::0]|(red:1.2)]', 20, 10, [(1, '(big)'), (2, ''), (3, '(red:1.2)'), (4, '(big)'), (5, ''), (6, '(red:1.2)'), (7, '(big)'), (8, ''), (9, '(red:1.2)'), (10, '(big)')]),
    ('[\\[s\\]:[[[ (red:1.2)x y:0.25]|[(big):b\\[s\\]:2 ]]|(red:1.2)|(big)]:1]', 1, None, [(1, '\\[s\\]')]),
    ('[\\[s\\]:[[[ (red:1.2)x y:0.25]|[(big):b\\[s\\]:2 ]]|(red:1.2)|(big)]:1]', 2, None, [(1, '\\[s\\]'), (2, '(red:1.2)')]),
    ('[\\[s\\]:[[[ (red:1.2)x y:0.25]|[(big):b\\[s\\]:2 ]]|(red:1.2)|(big)]:1]', 20, None, [(1, '\\[s\\]'), (2, '(red:1.2)'), (3, '(big)'), (4, 'b\\[s\\]'), (5, '(red:1.2)'), (6, '(big)'), (7, ' (red:1.2)x y'), (8, '(red:1.2)'), (9, '(big)'), (10, 'b\\[s\\]'), (11, '(red:1.2)'), (12, '(big)'), (13, ' (red:1.2)x y'), (14, '(red:1.2)'), (15, '(big)'), (16, 'b\\[s\\]'), (17, '(red:1.2)'), (18, '(big)'), (19, ' (red:1.2)x y'), (20, '(red:1.2)')]),
    ('[\\[s\\]:[[[ (red:1.2)x y:0.25]|[(big):b\\[s\\]:2 ]]|(red:1.2)|(big)]:1]', 20, 10, [(1, ' (red:1.2)x y'), (2, '(red:1.2)'), (3, '(big)'), (4, 'b\\[s\\]'), (5, '(red:1.2)'), (6, '(big)'), (7, ' (red:1.2)x y'), (8, '(red:1.2)'), (9, '(big)'), (10, 'b\\[s\\]')]),
    ('[[[[(red:1.2)::1.5]]:[\\[s\\]::0.25][(big):(red:1.2):.7][cat:10]: 2]::3]', 1, None, [(1, '[(red:1.2)]')]),
    ('[[[[(red:1.2)::1.5]]:[\\[s\\]::0.25][(big):(red:1.2):.7][cat:10]: 2]::3]', 2, None, [(1, '[(red:1.2)]'), (2, '[(red:1.2)]')]),
    ('[[[[(red:1.2)::1.5]]:[\\[s\\]::0.25][(big):(red:1.2):.7][cat:10]: 2]::3]', 20, None, [(2, '[(red:1.2)]'), (3, '\\[s\\](big)'), (5, ''), (10, ''), (14, ''), (20, '')]),
    ('[[[[(red:1.2)::1.5]]:[\\[s\\]::0.25][(big):(red:1.2):.7][cat:10]: 2]::3]', 30, None, [(2, '[(red:1.2)]'), (3, '\\[s\\](big)'), (7, ''), (10, ''), (21, ''), (30, '')]),
    ('[[[[(red:1.2)::1.5]]:[\\[s\\]::0.25][(big):(red:1.2):.7][cat:10]: 2]::3]', 20, 10, [(5, ''), (10, '')]),
    ('[[[[(red:1.2)::1.5]]:[\\[s\\]::0.25][(big):(red:1.2):.7][cat:10]: 2]::3]', 30, 15, [(7, ''), (15, '')]),
    ('[[[a]::10] 1:3]', 1, None, [(1, '')]),
    ('[[[a]::10] 1:3]', 2, None, [(2, '')]),
    ('[[[a]::10] 1:3]', 20, None, [(3, ''), (10, '[a] 1'), (20, ' 1')]),
    ('[[[a]::10] 1:3]', 30, None, [(3, ''), (10, '[a] 1'), (30, ' 1')]),
    ('[[[a]::10] 1:3]', 20, 10, [(10, ' 1')]),
    ('[[[a]::10] 1:3]', 30, 15, [(15, ' 1')]),
    ('[[::0.25]:(red:1.2):0.0]', 1, None, [(1, '(red:1.2)')]),
    ('[[::0.25]:(red:1.2):0.0]', 2, None, [(2, '(red:1.2)')]),
    ('[[::0.25]:(red:1.2):0.0]', 20, None, [(5, '(red:1.2)'), (20, '(red:1.2)')]),
    ('[[::0.25]:(red:1.2):0.0]', 30, None, [(7, '(red:1.2)'), (30, '(red:1.2)')]),
    ('[[::0.25]:(red:1.2):0.0]', 20, 10, [(10, '(red:1.2)')]),
    ('[[::0.25]:(red:1.2):0.0]', 30, 15, [(15, '(red:1.2)')]),
    ('[x y|[(abb(big))::.7]|[x y:.7]]', 1, None, [(1, 'x y')]),
    ('[x y|[(abb(big))::.7]|[x y:.7]]', 2, None, [(1, 'x y'), (2, '')]),
    ('[x y|[(abb(big))::.7]|[x y:.7]]', 20, None, [(1, 'x y'), (2, '(abb(big))'), (3, ''), (4, 'x y'), (5, '(abb(big))'), (6, ''), (7, 'x y'), (8, '(abb(big))'), (9, ''), (10, 'x y'), (11, '(abb(big))'), (12, ''), (13, 'x y'), (14, '(abb(big))'), (15, 'x y'), (16, 'x y'), (17, ''), (18, 'x y'), (19, 'x y'), (20, '')]),
    ('[x y|[(abb(big))::.7]|[x y:.7]]', 20, 10, [(1, 'x y'), (2, ''), (3, 'x y'), (4, 'x y'), (5, ''), (6, 'x y'), (7, 'x y'), (8, ''), (9, 'x y'), (10, 'x y')]),
    ('[[1[\\[s\\]:: 2]:0.25](big)]', 1, None, [(1, '[1\\[s\\](big)]')]),
    ('[[1[\\[s\\]:: 2]:0.25](big)]', 2, None, [(2, '[1\\[s\\](big)]')]),
    ('[[1[\\[s\\]:: 2]:0.25](big)]', 20, None, [(2, '[(big)]'), (5, '[(big)]'), (20, '[1(big)]')]),
    ('[[1[\\[s\\]:: 2]:0.25](big)]', 30, None, [(2, '[(big)]'), (7, '[(big)]'), (30, '[1(big)]')]),
    ('[[1[\\[s\\]:: 2]:0.25](big)]', 20, 10, [(10, '[1(big)]')]),
    ('[[1[\\[s\\]:: 2]:0.25](big)]', 30, 15, [(15, '[1(big)]')]),
    ('[[(big)|[[(red:1.2)]|[1|1]|[dog|cat]]]:3]', 1, None, [(1, '')]),
    ('[[(big)|[[(red:1.2)]|[1|1]|[dog|cat]]]:3]', 2, None, [(1, ''), (2, '')]),
    ('[[(big)|[[(red:1.2)]|[1|1]|[dog|cat]]]:3]', 20, None, [(1, ''), (2, ''), (3, ''), (4, '[(red:1.2)]'), (5, '(big)'), (6, 'cat'), (7, '(big)'), (8, '1'), (9, '(big)'), (10, '[(red:1.2)]'), (11, '(big)'), (12, 'cat'), (13, '(big)'), (14, '1'), (15, '(big)'), (16, '[(red:1.2)]'), (17, '(big)'), (18, 'cat'), (19, '(big)'), (20, '1')]),
    ('[[(big)|[[(red:1.2)]|[1|1]|[dog|cat]]]:3]', 20, 10, [(1, '(big)'), (2, '1'), (3, '(big)'), (4, '[(red:1.2)]'), (5, '(big)'), (6, 'cat'), (7, '(big)'), (8, '1'), (9, '(big)'), (10, '[(red:1.2)]')]),
    ('[cat[ :2 ][1 :10]:1]', 1, None, [(1, '')]),
    ('[cat[ :2 ][1 :10]:1]', 2, None, [(1, ''), (2, 'cat')]),
    ('[cat[ :2 ][1 :10]:1]', 20, None, [(1, ''), (2, 'cat'), (10, 'cat '), (20, 'cat 1 ')]),
    ('[cat[ :2 ][1 :10]:1]', 30, None, [(1, ''), (2, 'cat'), (10, 'cat '), (30, 'cat 1 ')]),
    ('[cat[ :2 ][1 :10]:1]', 20, 10, [(10, 'cat 1 ')]),
    ('[cat[ :2 ][1 :10]:1]', 30, 15, [(15, 'cat 1 ')]),
    ('[b|[(red:1.2)[[1 cat:1.0] ]x y]]', 1, None, [(1, 'b')]),
    ('[b|[(red:1.2)[[1 cat:1.0] ]x y]]', 2, None, [(1, 'b'), (2, '[(red:1.2)[ ]x y]')]),
    ('[b|[(red:1.2)[[1 cat:1.0] ]x y]]', 20, None, [(1, 'b'), (2, '[(red:1.2)[ ]x y]'), (3, 'b'), (4, '[(red:1.2)[ ]x y]'), (5, 'b'), (6, '[(red:1.2)[ ]x y]'), (7, 'b'), (8, '[(red:1.2)[ ]x y]'), (9, 'b'), (10, '[(red:1.2)[ ]x y]'), (11, 'b'), (12, '[(red:1.2)[ ]x y]'), (13, 'b'), (14, '[(red:1.2)[ ]x y]'), (15, 'b'), (16, '[(red:1.2)[ ]x y]'), (17, 'b'), (18, '[(red:1.2)[ ]x y]'), (19, 'b'), (20, '[(red:1.2)[ ]x y]')]),
    ('[b|[(red:1.2)[[1 cat:1.0] ]x y]]', 20, 10, [(1, 'b'), (2, '[(red:1.2)[1 cat ]x y]'), (3, 'b'), (4, '[(red:1.2)[1 cat ]x y]'), (5, 'b'), (6, '[(red:1.2)[1 cat ]x y]'), (7, 'b'), (8, '[(red:1.2)[1 cat ]x y]'), (9, 'b'), (10, '[(red:1.2)[1 cat ]x y]')]),
    ('[[ ]:(big):0.0]', 1, None, [(1, '(big)')]),
    ('[[ ]:(big):0.0]', 2, None, [(2, '(big)')]),
    ('[[ ]:(big):0.0]', 20, None, [(20, '(big)')]),
    ('[[ ]:(big):0.0]', 30, None, [(30, '(big)')]),
    ('[[ ]:(big):0.0]', 20, 10, [(10, '(big)')]),
    ('[[ ]:(big):0.0]', 30, 15, [(15, '(big)')]),
    ('[[[\\[s\\]]dog[1a::2]:1]:[(big):dog:.7]:10]', 1, None, [(1, '')]),
    ('[[[\\[s\\]]dog[1a::2]:1]:[(big):dog:.7]:10]', 2, None, [(1, ''), (2, '[\\[s\\]]dog1a')]),
    ('[[[\\[s\\]]dog[1a::2]:1]:[(big):dog:.7]:10]', 20, None, [(1, ''), (2, '[\\[s\\]]dog1a'), (10, '[\\[s\\]]dog'), (14, '(big)'), (20, 'dog')]),
    ('[[[\\[s\\]]dog[1a::2]:1]:[(big):dog:.7]:10]', 30, None, [(1, ''), (2, '[\\[s\\]]dog1a'), (10, '[\\[s\\]]dog'), (21, '(big)'), (30, 'dog')]),
    ('[[[\\[s\\]]dog[1a::2]:1]:[(big):dog:.7]:10]', 20, 10, [(10, 'dog')]),
    ('[[[\\[s\\]]dog[1a::2]:1]:[(big):dog:.7]:10]', 30, 15, [(15, 'dog')]),
    ('[[[[(big):-1][\\[s\\]::0.25][(big): :2 ]:2]|dog]:catx ycat[a:.7]:3]', 1, None, [(1, '')]),
    ('[[[[(big):-1][\\[s\\]::0.25][(big): :2 ]:2]|dog]:catx ycat[a:.7]:3]', 2, None, [(1, ''), (2, 'dog')]),
    ('[[[[(big):-1][\\[s\\]::0.25][(big): :2 ]:2]|dog]:catx ycat[a:.7]:3]', 20, None, [(1, ''), (2, 'dog'), (3, '(big)\\[s\\] '), (4, 'catx ycat'), (5, 'catx ycat'), (6, 'catx ycat'), (7, 'catx ycat'), (8, 'catx ycat'), (9, 'catx ycat'), (10, 'catx ycat'), (11, 'catx ycat'), (12, 'catx ycat'), (13, 'catx ycat'), (14, 'catx ycat'), (15, 'catx ycata'), (16, 'catx ycata'), (17, 'catx ycata'), (18, 'catx ycata'), (19, 'catx ycata'), (20, 'catx ycata')]),
    ('[[[[(big):-1][\\[s\\]::0.25][(big): :2 ]:2]|dog]:catx ycat[a:.7]:3]', 20, 10, [(1, 'catx ycata'), (2, 'catx ycata'), (3, 'catx ycata'), (4, 'catx ycata'), (5, 'catx ycata'), (6, 'catx ycata'), (7, 'catx ycata'), (8, 'catx ycata'), (9, 'catx ycata'), (10, 'catx ycata')]),
    ('[ ::0.5]', 1, None, [(1, '')]),
    ('[ ::0.5]', 2, None, [(1, ' '), (2, '')]),
    ('[ ::0.5]', 20, None, [(10, ' '), (20, '')]),
    ('[ ::0.5]', 30, None, [(15, ' '), (30, '')]),
    ('[ ::0.5]', 20, 10, [(10, '')]),
    ('[ ::0.5]', 30, 15, [(15, '')]),
    ('[[[a::0.25]::3]|[[:-1](red:1.2)x y[cat\\[s\\]cat:0.25]]|b]', 1, None, [(1, '')]),
    ('[[[a::0.25]::3]|[[:-1](red:1.2)x y[cat\\[s\\]cat:0.25]]|b]', 2, None, [(1, ''), (2, '[(red:1.2)x ycat\\[s\\]cat]')]),
    ('[[[a::0.25]::3]|[[:-1](red:1.2)x y[cat\\[s\\]cat:0.25]]|b]', 20, None, [(1, 'a'), (2, '[(red:1.2)x y]'), (3, 'b'), (4, ''), (5, '[(red:1.2)x y]'), (6, 'b'), (7, ''), (8, '[(red:1.2)x ycat\\[s\\]cat]'), (9, 'b'), (10, ''), (11, '[(red:1.2)x ycat\\[s\\]cat]'), (12, 'b'), (13, ''), (14, '[(red:1.2)x ycat\\[s\\]cat]'), (15, 'b'), (16, ''), (17, '[(red:1.2)x ycat\\[s\\]cat]'), (18, 'b'), (19, ''), (20, '[(red:1.2)x ycat\\[s\\]cat]')]),
    ('[[[a::0.25]::3]|[[:-1](red:1.2)x y[cat\\[s\\]cat:0.25]]|b]', 20, 10, [(1, ''), (2, '[(red:1.2)x ycat\\[s\\]cat]'), (3, 'b'), (4, ''), (5, '[(red:1.2)x ycat\\[s\\]cat]'), (6, 'b'), (7, ''), (8, '[(red:1.2)x ycat\\[s\\]cat]'), (9, 'b'), (10, '')]),
    ('[[:.7][cat:[(big)  ]:0]:-1]', 1, None, [(1, '[(big)  ]')]),
    ('[[:.7][cat:[(big)  ]:0]:-1]', 2, None, [(1, '[(big)  ]'), (2, '[(big)  ]')]),
    ('[[:.7][cat:[(big)  ]:0]:-1]', 20, None, [(14, '[(big)  ]'), (20, '[(big)  ]')]),
    ('[[:.7][cat:[(big)  ]:0]:-1]', 30, None, [(21, '[(big)  ]'), (30, '[(big)  ]')]),
    ('[[:.7][cat:[(big)  ]:0]:-1]', 20, 10, [(10, '[(big)  ]')]),
    ('[[:.7][cat:[(big)  ]:0]:-1]', 30, 15, [(15, '[(big)  ]')]),
    ('[[[(big)[1:\\[s\\]:1.5]: 2]]:0.25]', 1, None, [(1, '[]')]),
    ('[[[(big)[1:\\[s\\]:1.5]: 2]]:0.25]', 2, None, [(2, '[]')]),
    ('[[[(big)[1:\\[s\\]:1.5]: 2]]:0.25]', 20, None, [(2, ''), (5, ''), (20, '[(big)1]')]),
    ('[[[(big)[1:\\[s\\]:1.5]: 2]]:0.25]', 30, None, [(2, ''), (7, ''), (30, '[(big)1]')]),
    ('[[[(big)[1:\\[s\\]:1.5]: 2]]:0.25]', 20, 10, [(5, '[(big)1]'), (10, '[(big)\\[s\\]]')]),
    ('[[[(big)[1:\\[s\\]:1.5]: 2]]:0.25]', 30, 15, [(7, '[(big)1]'), (15, '[(big)\\[s\\]]')]),
    ('[:dogx y:1]', 1, None, [(1, '')]),
    ('[:dogx y:1]', 2, None, [(1, ''), (2, 'dogx y')]),
    ('[:dogx y:1]', 20, None, [(1, ''), (20, 'dogx y')]),
    ('[:dogx y:1]', 30, None, [(1, ''), (30, 'dogx y')]),
    ('[:dogx y:1]', 20, 10, [(10, 'dogx y')]),
    ('[:dogx y:1]', 30, 15, [(15, 'dogx y')]),
]
# fmt: on


@pytest.mark.parametrize("prompt,steps,hires_steps,expected", A1111_SCHEDULES)
def test_schedule_matches_a1111(prompt, steps, hires_steps, expected):
    assert prompt_schedule(prompt, steps, hires_steps) == expected


# --- the parser on its own ------------------------------------------------------------------------

_PIECES = ["a", "cat", " ", ", ", "(red:1.2)", "(big)", "[small]", "\\[x\\]", "\\:", "<lora:foo:0.5>", "BREAK", "1", "0.5"]
_CHARS = list("ab [](): |\\.1") + ["\n", "\t"]


def _random_prompt(r: random.Random, depth: int = 0) -> str:
    if depth > 3 or r.random() < 0.3:
        return r.choice(_PIECES)
    parts = [_random_prompt(r, depth + 1) for _ in range(r.randint(1, 3))]
    when = r.choice(["1", "3", "0.5", ".25", "1.5", "0", "-1", " 2 ", "1e1", "99"])
    shape = r.randrange(6)
    if shape == 0:
        return f"[{parts[0]}:{''.join(parts[1:])}:{when}]"
    if shape == 1:
        return f"[{''.join(parts)}:{when}]"
    if shape == 2:
        return f"[{parts[0]}::{when}]"
    if shape == 3:
        return "[" + "|".join(parts) + "]"
    if shape == 4:
        return "(" + "".join(parts) + ")"
    return "".join(parts)


@pytest.mark.parametrize("seed", range(4))
def test_random_prompts_never_crash_and_plain_ones_are_one_entry(seed):
    r = random.Random(seed)
    for i in range(300):
        if i % 3 == 0:
            prompt = "".join(r.choice(_CHARS) for _ in range(r.randint(0, 16)))
        else:
            prompt = _random_prompt(r)
            if i % 3 == 2:  # a stray character somewhere
                k = r.randint(0, len(prompt))
                prompt = prompt[:k] + r.choice("[]():|\\") + prompt[k:]
        for steps, hires_steps in ((1, None), (2, None), (20, None), (30, 15)):
            schedule = prompt_schedule(prompt, steps, hires_steps)
            total = hires_steps or steps
            assert schedule[-1][0] == total and all(1 <= end <= total for end, _ in schedule)
            assert [end for end, _ in schedule] == sorted({end for end, _ in schedule})
            if not has_schedule(prompt):
                assert schedule == [(total, prompt)]
        if "[" not in prompt:
            assert not has_schedule(prompt)


def test_emphasis_escapes_and_networks_survive_in_the_texts():
    prompt = "<lora:style:0.7> (masterpiece:1.2), \\[sic\\], [(red:1.1) hair|blue hair], [((sky)):sea:0.5] \\:)"
    schedule = prompt_schedule(prompt, 4)
    assert [t for _, t in schedule] == [
        "<lora:style:0.7> (masterpiece:1.2), \\[sic\\], (red:1.1) hair, ((sky)) \\:)",
        "<lora:style:0.7> (masterpiece:1.2), \\[sic\\], blue hair, ((sky)) \\:)",
        "<lora:style:0.7> (masterpiece:1.2), \\[sic\\], (red:1.1) hair, sea \\:)",
        "<lora:style:0.7> (masterpiece:1.2), \\[sic\\], blue hair, sea \\:)",
    ]


def test_bad_steps_are_refused():
    with pytest.raises(ValueError, match="steps"):
        prompt_schedule("[a:b:1]", 0)
    with pytest.raises(ValueError, match="hires_steps"):
        prompt_schedule("[a:b:1]", 5, hires_steps=0)


# --- per-step conditioning in the generator -------------------------------------------------------

FAST = dict(steps=4, width=64, height=64, sampler="Euler", seed=3)


def arr(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


class UNetSpy:
    """Records what the denoiser is given at every call: ``encoder_hidden_states`` and SDXL's pooled."""

    def __init__(self, unet) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        self._handle = unet.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        pooled = (kwargs.get("added_cond_kwargs") or {}).get("text_embeds")
        self.calls.append((kwargs["encoder_hidden_states"].clone(), None if pooled is None else pooled.clone()))

    def close(self) -> None:
        self._handle.remove()


def _record(g: Generator, **settings):
    spy = UNetSpy(g.load().pipe.unet)
    try:
        images = g.generate(GenerationSettings(**settings))
    finally:
        spy.close()
    return images, spy.calls


def _labels(calls, refs: dict[str, tuple], half: int) -> list[str]:
    """Per denoiser call, which reference text the positive (half=1) or negative (half=0) row was."""
    out = []
    for embeds, pooled in calls:
        row = embeds.chunk(2)[half]
        pooled_row = None if pooled is None else pooled.chunk(2)[half]
        names = [
            name for name, (e, p) in refs.items() if torch.equal(row, e) and (pooled_row is None or torch.equal(pooled_row, p))
        ]
        out.append(names[0] if len(names) == 1 else "?")
    return out


@pytest.fixture(scope="module")
def sd1_gen(loop_models):
    _, sd = loop_models
    yield Generator(sd, device="cpu", progress=False, notice=lambda m: None)
    cache_clear()


@pytest.fixture(scope="module")
def sd1_refs(sd1_gen):
    """The positive and negative embeddings of plain prompts, as the denoiser received them."""
    refs = {}
    for text in ("cat", "dog", "fox"):
        _, calls = _record(sd1_gen, prompt=text, negative_prompt=text, **FAST)
        refs[text] = (calls[0][0].chunk(2)[1], None)
    return refs


def test_editing_switches_the_conditioning_at_a1111s_step(sd1_gen, sd1_refs):
    # A1111: [cat:dog:2] at 4 steps is [(2, cat), (4, dog)]; the denoiser call k (from 0) takes the
    # first entry with k <= end, so calls 0, 1, 2 see "cat" and call 3 "dog"
    images, calls = _record(sd1_gen, prompt="[cat:dog:2]", negative_prompt="[fox:cat:0.25]", **FAST)
    assert _labels(calls, sd1_refs, 1) == ["cat", "cat", "cat", "dog"]
    assert _labels(calls, sd1_refs, 0) == ["fox", "fox", "cat", "cat"]  # 0.25 of 4 steps = step 1
    assert images[0].infotext.startswith("[cat:dog:2]\nNegative prompt: [fox:cat:0.25]\n")

    _, calls = _record(sd1_gen, prompt="[cat|dog|fox]", **FAST)
    # [(1, cat), (2, dog), (3, fox), (4, cat)]: calls 0 and 1 -> cat, 2 -> dog, 3 -> fox
    assert _labels(calls, sd1_refs, 1) == ["cat", "cat", "dog", "fox"]


def test_edited_image_differs_and_degenerate_schedules_equal_plain_prompts(sd1_gen):
    one = lambda prompt, **kw: arr(sd1_gen.generate(GenerationSettings(prompt=prompt, **{**FAST, **kw}))[0].image)  # noqa: E731
    cat, dog = one("cat"), one("dog")
    mixed = one("[dog:cat:1]")  # "dog" for calls 0 and 1, then "cat"
    assert (mixed != cat).any() and (mixed != dog).any()
    # schedules A1111 reduces to one text: switch at or after the last step, at 0, or below 0
    assert (one("[cat:dog:4]") == cat).all()
    assert (one("[cat:dog:1.0]") == cat).all()
    assert (one("[cat:dog:0]") == dog).all()
    assert (one("[cat:dog:-1]") == dog).all()
    assert (one("[cat|cat]") == cat).all()
    assert (one("cat", negative_prompt="[dog::9]") == one("cat", negative_prompt="dog")).all()


def test_prompts_without_schedules_keep_the_plain_path(sd1_gen, monkeypatch):
    from tagloop.generator import schedule

    plain = arr(sd1_gen.generate(GenerationSettings(prompt="(cat:1.2), [dog], \\[x:y:1\\]", **FAST))[0].image)

    def refuse(*args, **kwargs):
        raise AssertionError("per-step conditioning used for a prompt without a schedule")

    monkeypatch.setattr(schedule.StepConditioning, "kwargs", refuse)
    again = arr(sd1_gen.generate(GenerationSettings(prompt="(cat:1.2), [dog], \\[x:y:1\\]", **FAST))[0].image)
    assert (plain == again).all()


def test_a_batch_mixing_scheduled_and_plain_prompts_gives_each_its_own_conditioning(sd1_gen, sd1_refs):
    pairs = [("[cat:dog:0.5]", "fox"), ("cat", "[dog|fox]"), ("fox", "cat")]
    batched, calls = _record(sd1_gen, prompts=pairs, max_batch=3, **FAST)
    assert len(calls) == 4 and calls[0][0].shape[0] == 6  # one forward: [3 negatives, 3 positives]
    rows = [[_labels([(e[k : k + 1].repeat(2, 1, 1), None)], sd1_refs, 1)[0] for k in range(6)] for e, _ in calls]
    assert [r[3] for r in rows] == ["cat", "cat", "cat", "dog"]  # image 0, positive
    assert [r[1] for r in rows] == ["dog", "dog", "fox", "dog"]  # image 1, negative [(1,dog),(2,fox),...]
    assert {r[k] for r in rows for k in (0, 2, 4, 5)} == {"fox", "cat"} and rows[0][0] == rows[3][0] == "fox"
    for (pos, neg), image in zip(pairs, batched):
        alone = sd1_gen.generate(GenerationSettings(prompt=pos, negative_prompt=neg, **FAST))[0]
        assert np.abs(arr(image.image) - arr(alone.image)).max() <= 1, pos  # batching noise only


def test_every_text_of_a_forward_has_the_same_chunk_count(sd1_gen):
    from tagloop.generator.encode import count_chunks

    long = ", ".join(["a b c"] * 40)  # over 75 tokens
    chunks = count_chunks(sd1_gen.load().pipe.tokenizer, long)
    assert chunks > 1
    _, calls = _record(sd1_gen, prompt=f"[cat:{long}:2]", negative_prompt="[dog|fox]", **FAST)
    assert {embeds.shape[1] for embeds, _ in calls} == {77 * chunks}  # "cat", "dog", "fox" padded too


def test_second_order_samplers_count_denoiser_calls_as_a1111(sd1_gen, sd1_refs):
    # Heun: A1111 schedules 2 * 3 = 6 steps ([(3, cat), (6, dog)]); diffusers' loop makes its 5 calls
    _, calls = _record(sd1_gen, prompt="[cat:dog:0.5]", **{**FAST, "steps": 3, "sampler": "Heun"})
    assert _labels(calls, sd1_refs, 1) == ["cat", "cat", "cat", "cat", "dog"]
    # DPM++ SDE: the same 6-step schedule, but diffusers' stand-in makes one call per step (0, 2, 4)
    _, calls = _record(sd1_gen, prompt="[cat:dog:0.5]", **{**FAST, "steps": 3, "sampler": "DPM++ SDE"})
    assert _labels(calls, sd1_refs, 1) == ["cat", "cat", "dog"]


def test_img2img_and_hires_use_a1111s_step_counts(sd1_gen, sd1_refs):
    init = sd1_gen.generate(GenerationSettings(prompt="fox", **FAST))[0].image
    # img2img, 4 steps at denoising 0.5: 3 steps run of a 4-step schedule, calls counted from 0
    _, calls = _record(sd1_gen, prompt="[cat:dog:1]", init_image=init, denoising_strength=0.5, **FAST)
    assert _labels(calls, sd1_refs, 1) == ["cat", "cat", "dog"]
    _, calls = _record(sd1_gen, prompt="[cat:dog:0.5]", init_image=init, denoising_strength=0.5, **FAST)
    assert _labels(calls, sd1_refs, 1) == ["cat", "cat", "cat"]
    # hires: the first pass (4 steps) never reaches 1.5; the hires pass (4 steps) switches after
    # (1.5 - 1) * 4 = 2 of them; an integer counts on from the first pass: 5 is the hires step 1
    hires = dict(hires_scale=1.5, hires_steps=4, hires_denoise=0.5)
    _, calls = _record(sd1_gen, prompt="[cat:dog:1.5]", **FAST, **hires)
    assert len(calls) == 8 and _labels(calls[:4], sd1_refs, 1) == ["cat"] * 4
    second = [e for e, _ in calls[4:]]
    assert [torch.equal(second[k], second[0]) for k in range(4)] == [True, True, True, False]
    _, calls = _record(sd1_gen, prompt="[cat:dog:5]", **FAST, **hires)
    second = [e for e, _ in calls[4:]]
    assert [torch.equal(second[k], second[0]) for k in range(4)] == [True, True, False, False]


@pytest.fixture(scope="module")
def sdxl_gen(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sched_sdxl") / "sdxl"
    tiny.save_tiny_diffusers("sdxl", folder)
    yield Generator(folder, device="cpu", progress=False, notice=lambda m: None)
    cache_clear()


def test_sdxl_switches_embeddings_and_pooled_embeddings(sdxl_gen):
    refs = {}
    for text in ("cat", "dog"):
        _, calls = _record(sdxl_gen, prompt=text, negative_prompt="fox", **FAST)
        refs[text] = (calls[0][0].chunk(2)[1], calls[0][1].chunk(2)[1])
    images, calls = _record(sdxl_gen, prompt="[cat:dog:2]", negative_prompt="fox", **FAST)
    assert all(pooled is not None for _, pooled in calls)
    assert _labels(calls, refs, 1) == ["cat", "cat", "cat", "dog"]  # embeddings and pooled together
    plain = arr(sdxl_gen.generate(GenerationSettings(prompt="cat", negative_prompt="fox", **FAST))[0].image)
    assert (arr(images[0].image) != plain).any()
    same = sdxl_gen.generate(GenerationSettings(prompt="[cat:dog:9]", negative_prompt="fox", **FAST))[0].image
    assert (arr(same) == plain).all()


def test_sd3_refuses_scheduled_prompts_before_loading(tmp_path):
    folder = tmp_path / "sd3"
    tiny.save_tiny_diffusers("sd3", folder)
    g = Generator(folder, device="cpu", progress=False, notice=lambda m: None)
    with pytest.raises(SettingsError, match="`negative_prompt` uses prompt editing or alternation"):
        g.prepare(GenerationSettings(prompt="(cat:1.2), [dog]", negative_prompt="[ugly|blurry]", **FAST))
    assert g._loaded is None
    g.prepare(GenerationSettings(prompt="(cat:1.2), [dog], \\[a|b\\]", **FAST))  # no schedule: fine
