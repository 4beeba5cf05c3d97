"""Input readers: every format detected and read, multi-turn prompts, errors that name
the file and line."""

import json

import pytest

from pasta_jax import errors
from pasta_jax.annotation import formats


def write(tmp_path, rows, name='in.jsonl') -> str:
  path = tmp_path / name
  path.write_bytes(b''.join((r if isinstance(r, bytes) else
                             (r if isinstance(r, str) else json.dumps(r)).encode()) + b'\n'
                            for r in rows))
  return str(path)


def read(path, *args, **kwargs):
  return list(formats.read(path, *args, **kwargs))


def test_prompt_response_keeps_other_fields(tmp_path):
  path = write(tmp_path, [{'prompt': 'p', 'response': 'r', 'id': 3}, '',
                          {'prompt': 'q', 'response': 's'}])
  records = read(path)
  assert [(r.where, r.prompt, r.response, dict(r.rest)) for r in records] == [
      (f'{path}:1', 'p', 'r', {'id': 3}), (f'{path}:3', 'q', 's', {})]


def test_alpaca_joins_instruction_and_input(tmp_path):
  path = write(tmp_path, [{'instruction': 'Sum these.', 'input': '1, 2', 'output': '3'},
                          {'instruction': 'Say hi.', 'input': '', 'output': 'Hi.'},
                          {'instruction': 'Say yo.', 'output': 'Yo.', 'source': 'x'}])
  assert [(r.prompt, r.response, dict(r.rest)) for r in read(path)] == [
      ('Sum these.\n\n1, 2', '3', {}), ('Say hi.', 'Hi.', {}), ('Say yo.', 'Yo.', {'source': 'x'})]


def test_sharegpt_single_exchange_with_system(tmp_path):
  row = {'id': 'a', 'conversations': [{'from': 'system', 'value': 'Be brief.'},
                                      {'from': 'human', 'value': 'Hi?'},
                                      {'from': 'gpt', 'value': 'Hello.'}]}
  (record,) = read(write(tmp_path, [row]))
  assert (record.prompt, record.response, dict(record.rest)) == (
      'Be brief.\n\nHi?', 'Hello.', {'id': 'a'})


def test_multi_turn_context_is_a_transcript_and_the_last_answer_is_annotated(tmp_path):
  row = {'messages': [{'role': 'system', 'content': 'S'},
                      {'role': 'user', 'content': 'Q1'},
                      {'role': 'assistant', 'content': 'A1'},
                      {'role': 'user', 'content': [{'type': 'text', 'text': 'Q2a'},
                                                   {'type': 'text', 'text': 'Q2b'}]},
                      {'role': 'assistant', 'content': 'A2'}]}
  (record,) = read(write(tmp_path, [row]))
  assert record.prompt == 'System: S\n\nUser: Q1\n\nAssistant: A1\n\nUser: Q2a\nQ2b'
  assert record.response == 'A2'


def test_conversation_without_a_final_answer_is_skipped_with_its_reason(tmp_path):
  rows = [{'messages': [{'role': 'user', 'content': 'Q'}]},
          {'messages': [{'role': 'user', 'content': 'Q'}, {'role': 'assistant', 'content': 'A'},
                        {'role': 'user', 'content': 'Q2'}]},
          {'messages': [{'role': 'assistant', 'content': 'A'}]},
          {'messages': []}]
  problems = [r.problem for r in read(write(tmp_path, rows))]
  assert [p[0] for p in problems] == [formats.SKIPPED_NO_RESPONSE] * 4
  assert "its last turn is from 'user'" in problems[1][1]
  assert 'no user turn' in problems[2][1]
  assert 'it has no turns' in problems[3][1]


def test_fields_override(tmp_path):
  path = write(tmp_path, [{'question': 'q', 'answer': 'a', 'prompt': 'not this'}])
  (record,) = read(path, 'fields', fields=('question', 'answer'))
  assert (record.prompt, record.response, dict(record.rest)) == ('q', 'a', {'prompt': 'not this'})


def test_detection_order_and_undetectable_record(tmp_path):
  assert formats.detect({'messages': [], 'prompt': 'p', 'response': 'r'}) == 'messages'
  assert formats.detect({'conversations': []}) == 'sharegpt'
  assert formats.detect({'instruction': 'i', 'output': 'o'}) == 'alpaca'
  assert formats.detect({'prompt': 'p', 'response': 'r'}) == 'prompt_response'
  path = write(tmp_path, ['', {'question': 'q', 'answer': 'a'}])
  with pytest.raises(errors.DataError, match=rf'^{path}:2: cannot tell the format of this '
                     r'record \(fields: answer, question\).*--prompt_field'):
    read(path)


@pytest.mark.parametrize('line,problem', [
    (b'{"prompt": "p", "response": "\xff"}', r'invalid UTF-8: byte 0xff'),
    (b'{"prompt": "p",', r'invalid JSON'),
    (b'[1, 2]', r'expected a JSON object, got list'),
])
def test_bad_bytes_and_json_name_the_line(tmp_path, line, problem):
  path = write(tmp_path, [{'prompt': 'p', 'response': 'r'}, line])
  with pytest.raises(errors.DataError, match=rf'^{path}:2: {problem}') as info:
    read(path, on_error='skip')  # a damaged file fails even under skip
  assert info.value.exit_status == 3


def test_record_of_another_shape_fails_or_is_skipped(tmp_path):
  path = write(tmp_path, [{'instruction': 'i', 'output': 'o'},
                          {'instruction': 'i', 'output': 7},
                          {'prompt': 'p', 'response': 'r'}])
  with pytest.raises(errors.DataError, match=rf"^{path}:2: does not fit the alpaca format of this file: field "
                     "'output' must be a string, got int"):
    read(path)
  records = read(path, on_error='skip')
  assert [r.problem[0] if r.problem else None for r in records] == [
      None, formats.SKIPPED_BAD_RECORD, formats.SKIPPED_BAD_RECORD]
  assert "missing field 'instruction'" in records[2].problem[1]
  assert records[1].rest == {'instruction': 'i', 'output': 7}  # kept whole for the rejects


def test_non_text_message_part_is_a_bad_record(tmp_path):
  row = {'messages': [{'role': 'user', 'content': [{'type': 'image_url', 'image_url': {}}]},
                      {'role': 'assistant', 'content': 'A'}]}
  with pytest.raises(errors.DataError, match=r"messages\[0\].content has a part that is not "
                     r"text \('image_url'\)"):
    read(write(tmp_path, [row]))


def test_missing_file_and_bom(tmp_path):
  with pytest.raises(errors.DataError, match='does not exist'):
    read(str(tmp_path / 'none.jsonl'))
  path = write(tmp_path, [b'\xef\xbb\xbf' + json.dumps({'prompt': 'p', 'response': 'r'}).encode()])
  assert read(path)[0].response == 'r'
