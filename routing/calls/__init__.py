"""The call flows of the B2BUA, one concern per module; ``routing.b2bua`` composes them.

* :mod:`~routing.calls.services` — what every flow uses (directory, resolver, registrar lookup, clock, media
  ports, events, CDR writing, ring time, group plans, busy counting), as one :class:`CallServices`;
* :mod:`~routing.calls.leg` — one call's state (:class:`CallState`), header pass-through, ending legs;
* :mod:`~routing.calls.caller` — who is calling: an employee (digest), a trunk (source address and its
  numbers), or an anonymous source;
* :mod:`~routing.calls.ringing` — ringing a route, once for calls and transfers: fork, fallbacks, hops, loops;
* :mod:`~routing.calls.outbound` — calls through a trunk: Request-URI, identity, post-dial digits;
* :mod:`~routing.calls.media_anchor` and :mod:`~routing.calls.anchor` — anchored media, and the re-INVITEs
  (hold, resume) answered on an anchored leg;
* :mod:`~routing.calls.greeting` — extension processing: the greeting and the digits dialled during it;
* :mod:`~routing.calls.deliver` — ringing a call's route and connecting the winner;
* :mod:`~routing.calls.bridge` — the bridged call: requests relayed, the hook transfers plug into;
* :mod:`~routing.calls.originate` — click-to-call;
* :mod:`~routing.calls.records` — the call's CDR row.

Import rule: nothing here imports ``routing.b2bua`` or ``routing.transfer`` (tests/routing/test_layers.py).
"""
