"""What happens in a chat: send, stream a reply into the store and the transcript, stop,
regenerate, edit and resend, continue or discard a cut-off reply, switch between versions,
delete a message with its later turns (undoable), fork a branch into a new chat, and the
conversation's own settings (sampling, system prompt, context policy).

The controller owns the open conversation and the reply being written. Replies are written to
the store through `ReplyWriter` (every 250 ms) while the transcript repaints at its own pace.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from PySide6.QtCore import QObject, Signal

from app.attachments import summarize
from app.context import ContextFit, fit_context, policy_of, reply_reserve
from app.errors import StorageError, UserError
from app.gui.message_view import MessageView
from app.gui.transcript import Transcript
from app.messages import Failed, Finished, GenerationParams, Token
from app.settings import Settings
from app.store.conversation import Conversation, Message
from app.store.reply import ReplyWriter
from app.store.store import DeletedBranch, Store
from app.worker import EngineWorker, EventStream, Generate

ErrorSink = Callable[[str, str], None]  # (message, detail)
SIZE_CACHE = 20_000  # remembered message token counts


@dataclass
class ActiveReply:
    conversation_id: int
    message_id: int
    writer: ReplyWriter
    stream: EventStream


def describe(msg: Message) -> str:
    """The small grey line under a reply: model, tokens, speed, how it ended."""
    parts = []
    stats = msg.stats or {}
    if stats.get("completion_tokens"):
        parts.append(f"{stats['completion_tokens']:,} tokens")
    if stats.get("tokens_per_s"):
        parts.append(f"{stats['tokens_per_s']:,.1f} tok/s")
    if msg.finish_reason == "length":
        parts.append("stopped at the token limit")
    elif msg.finish_reason == "cancelled":
        parts.append("stopped")
    return " · ".join(parts)


def view_of(conv: Conversation, msg: Message) -> MessageView:
    index, count = conv.sibling_position(msg.id)
    text = summarize(msg.content) if msg.role == "user" else msg.content
    return MessageView(id=msg.id, role=msg.role, text=text, status=msg.status,
                       sibling_index=index, sibling_count=count, meta=describe(msg),
                       error=msg.error or "")


@dataclass(frozen=True)
class ChatSettings:
    """What the quick settings panel edits for one conversation."""

    params: GenerationParams
    system_prompt: str
    context_policy: str


class ChatController(QObject):
    conversation_changed = Signal(object)  # Conversation | None
    generating_changed = Signal(bool)
    reply_finished = Signal(object)  # GenerationStats
    rendered = Signal()  # the shown branch changed (a version switch, a delete...)
    send_refused = Signal(str)  # the text was not sent (the context is full): give it back
    notice = Signal(str)  # a context policy said no: one line for the user, not an error

    def __init__(self, store: Store, worker: EngineWorker, transcript: Transcript,
                 settings: Callable[[], Settings], on_error: ErrorSink,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.store, self.worker, self.transcript = store, worker, transcript
        self._settings, self._on_error = settings, on_error
        self.conversation: Conversation | None = None
        self.active: ActiveReply | None = None
        self.closed = False  # the window is closing: the store may go away
        self.pending: ChatSettings | None = None  # quick settings chosen before a new chat
        self._sizes: dict[tuple[str, str], int] = {}  # (role, content) -> tokens
        self._sizes_model: object = None  # the model those counts are for

    # ---- which conversation ---------------------------------------------------------------

    @property
    def conversation_id(self) -> int | None:
        return self.conversation.id if self.conversation is not None else None

    @property
    def generating(self) -> bool:
        return self.active is not None

    def open(self, conv_id: int | None) -> None:
        """Show a stored conversation (None: a new, empty chat)."""
        if conv_id is None:
            self.conversation = None
            self.pending = None
            self.transcript.set_messages([])
            self.conversation_changed.emit(None)
            self.rendered.emit()
            return
        self.conversation = self.store.get_conversation(conv_id)
        self.render()
        self.conversation_changed.emit(self.conversation)

    def render(self) -> None:
        """Reload the open conversation from the store and show its current branch."""
        if self.conversation is None:
            return
        conv = self.conversation = self.store.get_conversation(self.conversation.id)
        views = [view_of(conv, m) for m in conv.current_path()]
        if self.active is not None and self.active.conversation_id == conv.id:
            views = [_streaming(v, self.active) for v in views]
        self.transcript.set_messages(views)
        self.rendered.emit()

    def forget(self, conv_id: int) -> None:
        """The conversation went to the trash: close it if it is open."""
        if self.conversation_id == conv_id:
            self.open(None)

    def chat_messages(self) -> list[dict[str, str]]:
        """The engine's input for the open conversation as it stands (for token counts)."""
        if self.conversation is None:
            prompt = self.settings().system_prompt
            return [{"role": "system", "content": prompt}] if prompt else []
        return self.conversation.chat_messages()

    def settings(self) -> ChatSettings:
        """The open conversation's own settings over the app's (a new chat: what the quick
        settings panel set for it, else the app's)."""
        conv, app = self.conversation, self._settings()
        if conv is None:
            return self.pending or ChatSettings(app.sampling, app.system_prompt,
                                                policy_of(None))
        return ChatSettings(self._params(conv), conv.system_prompt, policy_of(conv.params))

    def apply_settings(self, chosen: ChatSettings | None) -> None:
        """Store the conversation's settings (None: back to the app's defaults)."""
        conv = self.conversation
        if conv is None:
            self.pending = chosen
            return
        if chosen is None:
            self.store.update_conversation(conv.id, params={},
                                           system_prompt=self._settings().system_prompt)
        else:
            params = {**chosen.params.to_dict(), "context_policy": chosen.context_policy}
            self.store.update_conversation(conv.id, params=params,
                                           system_prompt=chosen.system_prompt)
        self.conversation = self.store.get_conversation(conv.id)
        self.rendered.emit()

    def context_fit(self, draft: str = "") -> ContextFit | None:
        """What the next request would send under the conversation's context policy (with
        `draft` as a new user message), or None when no model is loaded."""
        info = self.worker.info
        if info is None:
            return None
        chosen = self.settings()
        messages = self.chat_messages()
        if draft.strip():
            messages.append({"role": "user", "content": draft})
        limit = info.context_length
        if self._sizes_model != info:  # another tokenizer: forget the remembered counts
            self._sizes, self._sizes_model = {}, info
        return fit_context(messages, self._count, limit, chosen.context_policy,
                           reply_reserve(chosen.params.max_tokens, limit), self._count_one)

    def _count(self, messages: list[dict[str, str]]) -> int:
        return self.worker.count_tokens(messages) or 0

    def _count_one(self, message: dict[str, str]) -> int:
        """One message's tokens, remembered (the meter refits a long chat on every pause in
        typing; only new messages are tokenized)."""
        key = (message["role"], message["content"])
        if key not in self._sizes:
            if len(self._sizes) > SIZE_CACHE:
                self._sizes.clear()
            self._sizes[key] = self._count([message])
        return self._sizes[key]

    # ---- deleting and forking ---------------------------------------------------------------

    def delete_message(self, message_id: int) -> DeletedBranch | None:
        """Delete a message and its later turns; returns what undo needs."""
        if self.generating:
            return None
        deleted = self.store.delete_message(message_id)
        self.render()
        return deleted

    def undo_delete(self, deleted: DeletedBranch) -> None:
        self.store.restore_branch(deleted)
        if self.conversation_id == deleted.conversation_id:
            self.render()

    def fork(self, message_id: int) -> int:
        """A new chat with the branch up to `message_id`; it is opened."""
        new_id = self.store.fork_conversation(message_id)
        self.open(new_id)
        return new_id

    # ---- sending and replying -------------------------------------------------------------

    async def send(self, text: str) -> None:
        if self.generating:
            return
        fit = self.context_fit(text)
        if fit is not None and fit.stopped:  # "stop at the limit", or the message is too big
            self.notice.emit(fit.stopped)
            self.send_refused.emit(text)
            return
        new = self.conversation is None
        if new:
            pending, self.pending = self.pending, None
            if pending is not None:
                params = {**pending.params.to_dict(), "context_policy": pending.context_policy}
                conv_id = self.store.create_conversation(system_prompt=pending.system_prompt,
                                                         params=params)
            else:
                conv_id = self.store.create_conversation(
                    system_prompt=self._settings().system_prompt)
            self.conversation = self.store.get_conversation(conv_id)
        conv = self.conversation
        assert conv is not None  # set above when there was none
        user_id = self.store.add_message(conv.id, conv.current_leaf_id, "user", text)
        if new:  # announced once it has its first message, so it has its title
            self.conversation = self.store.get_conversation(conv.id)
            self.conversation_changed.emit(self.conversation)
        await self._reply(conv.id, user_id)

    async def regenerate(self, message_id: int) -> None:
        """A new reply to the same user message; the old one stays as a sibling."""
        msg = self.store.get_message(message_id)
        if self.generating or msg.role != "assistant" or msg.parent_id is None:
            return
        await self._reply(msg.conversation_id, msg.parent_id)

    async def edit_and_resend(self, message_id: int, text: str) -> None:
        """The edited user message becomes a new branch, and gets a reply."""
        if self.generating:
            return
        new_id = self.store.edit_message(message_id, text)
        await self._reply(self.store.get_message(new_id).conversation_id, new_id)

    async def continue_reply(self, message_id: int) -> None:
        msg = self.store.get_message(message_id)
        if self.generating or msg.parent_id is None:
            return
        await self._reply(msg.conversation_id, msg.parent_id, resume=msg)

    def discard(self, message_id: int) -> None:
        self.store.discard_reply(message_id)
        self.render()

    def switch_sibling(self, message_id: int, step: int) -> None:
        if self.conversation is None:
            return
        siblings = [m.id for m in self.conversation.siblings(message_id)]
        index = siblings.index(message_id) + step
        if 0 <= index < len(siblings):
            self.store.switch_branch(siblings[index])
            self.render()

    def stop(self) -> None:
        if self.active is not None:
            self.active.stream.cancel()

    async def _reply(self, conv_id: int, parent_id: int, resume: Message | None = None) -> None:
        info = self.worker.info
        if info is None:
            self._on_error("No model is loaded: choose a Grok-2 folder in Settings or try "
                           "the demo model.", "")
            self.render()
            return
        conv = self.store.get_conversation(conv_id)
        params = self._params(conv)
        policy = policy_of(conv.params)
        messages = conv.chat_messages(upto_id=parent_id)
        fit = fit_context(messages, self._count, info.context_length, policy,
                          reply_reserve(params.max_tokens, info.context_length), self._count_one)
        if fit.stopped:
            self.notice.emit(fit.stopped)
            self.render()
            return
        if resume is not None:
            text = self.store.resume_reply(resume.id)
            message_id = resume.id
        else:
            text = ""
            message_id = self.store.begin_reply(conv_id, parent_id, info, params)
        request = Generate(tuple(messages), params, continue_text=text or None,
                           context_policy=policy)
        writer = ReplyWriter(self.store, message_id, text=text)
        self.active = ActiveReply(conv_id, message_id, writer, self.worker.stream(request))
        self.generating_changed.emit(True)
        self.render()
        try:
            await self._consume(self.active)
        finally:
            self.active = None
            if not self.closed:
                self.generating_changed.emit(False)
                self.transcript.flush()
                self.render()

    def _params(self, conv: Conversation) -> GenerationParams:
        if conv.params:
            try:
                return conv.generation_params(self._settings().sampling)
            except (TypeError, ValueError):
                pass  # an old or hand-edited row: fall back to the settings
        return self._settings().sampling

    async def _consume(self, active: ActiveReply) -> None:
        writer = active.writer
        try:
            async for event in active.stream:
                if isinstance(event, Token):
                    writer.add(event.text)
                    if self.conversation_id == active.conversation_id:
                        self.transcript.stream_text(active.message_id, writer.text)
                elif isinstance(event, Finished):
                    writer.finish(event.reason, event.stats, event.seed)
                    self.reply_finished.emit(event.stats)
                elif isinstance(event, Failed):
                    if event.continuable:  # a remote dropped: keep the text, offer Continue
                        writer.interrupt()
                    else:
                        writer.fail(event.error)
                    self._on_error(event.error, event.detail)
        except (StorageError, UserError) as exc:
            active.stream.close()
            self._on_error(f"{exc} (generation stopped; the reply so far is kept when "
                           "possible)", "")
            _try_interrupt(writer)

    def close_for_exit(self) -> None:
        """The window is closing: stop the reply and store what was written as interrupted."""
        self.closed = True
        active, self.active = self.active, None
        if active is None:
            return
        active.stream.close()
        if not active.writer.done:
            _try_interrupt(active.writer)


def _try_interrupt(writer: ReplyWriter) -> None:
    if writer.done:
        return
    try:
        writer.interrupt()
    except StorageError:
        pass  # the database cannot take it (disk full); the last 250 ms write stands


def _streaming(view: MessageView, active: ActiveReply) -> MessageView:
    """While streaming, the reply shows the writer's text (newer than the last store write)."""
    if view.id != active.message_id:
        return view
    return MessageView(id=view.id, role=view.role, text=active.writer.text, status="streaming",
                       sibling_index=view.sibling_index, sibling_count=view.sibling_count)

