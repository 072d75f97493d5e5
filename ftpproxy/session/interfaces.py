"""
The seams of a session: what each part may ask of the others.

A session is built from small objects, each the one owner of its state: the
client's control connection, the conversation with the backend, the command
handlers (security, login, data channel, user routing, transfers) and the
transfer in progress. They see each other only through these interfaces, so
each is tested against fakes in its own test file, and none can reach into
another's state.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class ISessionActions(Interface):
    """
    What the command handlers may ask of their session; each uses its part.
    The handlers hold the session itself rather than a bound method for
    each of these: they live as long as the session, and a bound method
    costs 64 bytes.
    """

    def closeSession(code=None, text=""):
        """
        End the session, telling the client why when C{code} is given.
        """

    def proxyFeatures():
        """
        What FEAT lists as the proxy's own (a new list of bytes).
        """

    def interruptTransfer():
        """
        Abort the transfer in progress, if any (QUIT).
        """

    def resetHandlers():
        """
        REIN: every handler back to its start.
        """

    def greetAgain(command):
        """
        REIN under routing by user: the backend goes and the proxy greets.
        """

    def routeTo(candidates, command):
        """
        USER chose its backend: drop the current one, if any, and connect to
        the first of C{candidates} that answers; C{command} goes to it.
        """

    def currentBackend():
        """
        The current backend (the pool's entry), or None.
        """

    def currentLink():
        """
        The current backend link (its C{conversation} and C{backend}), or
        None.
        """

    def loginChanged(loggedIn):
        """
        The backend accepted a login (True), or a logged-in client must log
        in again (False).
        """

    def clientClosed(reason):
        """
        The session is being closed for C{reason} (e.g. C{"login-timeout"};
        L{ftpproxy.events.IProxyEvents.clientClosed}).
        """


class IClientChannel(Interface):
    """
    The client's control connection, as the session uses it.
    """

    clientHost = Attribute("The client's address (behind a PROXY-protocol balancer: the real client's).")
    peerHost = Attribute(
        "The TCP peer of the control connection: the client, or the balancer in front that "
        "relays the client's data connections too."
    )
    localHost = Attribute("The address the client connected to, IPv4-mapped addresses as IPv4.")
    interfaceHost = Attribute(
        "Where the control connection really arrived on this machine: the interface to listen "
        "on for passive data and to connect from for active data."
    )

    def reply(reply):
        """
        Send one reply (an L{ftpproxy.wire.ftptext.Reply}) to the client.
        """

    def startTLS(creator):
        """
        Start the server side of TLS on the control connection.
        """

    def discardPendingInput():
        """
        Forget every byte received but not yet taken as a command; return
        True if there was any (commands behind AUTH before the handshake).
        """

    def close():
        """
        Close the connection once the replies written so far are sent, and
        abort it if the peer does not let go within a grace period.
        """

    def headerAddresses():
        """
        The (client, proxy) addresses to put in a PROXY protocol header
        towards the backend.
        """

    def loginChanged(loggedIn):
        """
        The backend accepted the client's login (True), or a logged-in
        client must log in again after REIN (False): what the proxy counts
        of connections not logged in changes.
        """


class ICommand(Interface):
    """
    One client command in progress: the only way a handler answers the
    client or talks to the backend on the command's behalf.

    Once L{finish} is called, the session reads the next command; a handler
    must call it exactly once, when the command's last reply is out.
    """

    verb = Attribute("The command verb, upper case (bytes).")
    argument = Attribute("What follows the verb and one space (bytes).")
    line = Attribute("The whole command line as received, without CRLF (bytes).")

    def reply(reply):
        """
        Send a reply to the client.
        """

    def replyText(code, text):
        """
        Send a single-line reply to the client.
        """

    def finish():
        """
        The command is over.
        """

    def relay(exchange=None):
        """
        Send the command line to the backend; the replies go to C{exchange},
        or, by default, to the client as they are, the command finishing at
        the final one.
        """

    def sendToBackend(line, exchange):
        """
        Send another command line to the backend on the client's behalf;
        its replies go to C{exchange}.
        """

    def readUrgentCommands():
        """
        While this command runs (a transfer), read ABOR and QUIT at once
        instead of queueing them behind it.
        """


class IExchange(Interface):
    """
    Whoever sent a command to the backend and wants its replies.
    """

    def replyReceived(command, reply):
        """
        The backend answered C{command} (the line sent) with C{reply}:
        preliminary replies (1xx) first, then exactly one final reply.
        """


class IBackendConversation(Interface):
    """
    The control connection to the session's backend, as a FIFO of commands
    awaiting their replies.
    """

    peerHost = Attribute("The backend's address on the control connection.")

    def send(line, exchange):
        """
        Send C{line}; its replies go to C{exchange} (an L{IExchange}).
        """

    def waitForData():
        """
        The command at the head of the queue had its preliminary reply and
        its final one waits on a data transfer: stop the reply deadline
        until L{dataFinished}.
        """

    def dataFinished():
        """
        The data legs are done: the final reply is due, under the deadline.
        """

    def resumingTLS():
        """
        A TLS creator for a data connection to the backend that resumes the
        control connection's session, or None for a clear data connection.
        """


class IDataChannel(Interface):
    """
    Where the client's data connection for the next transfer comes from:
    a passive listener or an active-mode connect.
    """

    def setDirection(download):
        """
        What the transfer does, for the TLS handshake of a protected leg.
        """

    def whenConnected(onLeg, onFailed):
        """
        Call C{onLeg} with the client's data leg once it is ready, or
        C{onFailed} with a failure if it could not be had.
        """

    def afterHandshake(callback):
        """
        Call C{callback} (it sends the reply that lets the client start
        sending an upload) once the client's data connection is not in the
        middle of a TLS handshake after which the client must have its
        session ticket; at once in every other case. C{close} calls a
        waiting C{callback} first.
        """

    def close():
        """
        Release the listener or connection, and any leg it made.
        """


class IDataProtection(Interface):
    """
    What the security handler says about the client's data connections.
    """

    tlsActive = Attribute("Whether the control connection is under TLS.")

    def dataTLS():
        """
        The TLS creator for the client's next data connection, or None for
        a clear one (PROT C).
        """


class IDataChannels(Interface):
    """
    What the transfer commands take from the data-channel handler.
    """

    def takeChannel():
        """
        The data channel set up by the last PASV/EPSV/PORT/EPRT, now owned
        by the caller, or None.
        """

    def takeRestartMarker():
        """
        The REST offset to replay before the transfer (bytes), or None.
        """

    def forget():
        """
        Drop the data channel and the restart marker (REIN, a refused
        transfer).
        """


class ITransferRecord(Interface):
    """
    The session facts a transfer's log event carries.
    """

    sessionId = Attribute("The session's id.")
    clientHost = Attribute("The client's address.")
    user = Attribute("The user name given with USER, or None.")
    transferType = Attribute("The last TYPE given: A, I, E or L.")
    backendName = Attribute("The name of the session's backend.")
