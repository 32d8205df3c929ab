// The local rules' counters and last error, and the alarms they keep (raised and recent).
import { Empty, ErrorLine, Section, TableWrap, useApi, THead } from '../components.js'
import { dateTime } from '../format.js'
import { t } from '../i18n.js'
import { Alarms } from './overview.js'
import type { RuleStats } from '../types.js'


export function Rules() {
  const rules = useApi<{ rules: RuleStats[] }>('/api/rules', 5_000)
  const list = rules.data?.rules ?? []
  return (
    <>
      <h1>{t('nav.rules')}</h1>
      <Section title={t('ru.rules')} id="rules">
        <ErrorLine error={rules.error} />
        {rules.data && list.length === 0 ? (
          <Empty>{t('ru.none')}</Empty>
        ) : (
          <TableWrap label={t('ru.rules')}>
            <THead cols={[t('col.name'), t('ru.from'), t('ru.actions'), t('ru.matched'), t('ru.emitted'), t('ru.dropped'), t('col.errors'), t('ov.lastError')]} />
            <tbody>
              {list.map((r) => (
                <tr key={r.name}>
                  <td>{r.name}</td>
                  <td>
                    <code>{r.from}</code>
                  </td>
                  <td>{r.actions.join(', ')}</td>
                  <td>{r.matched}</td>
                  <td>{r.emitted}</td>
                  <td>{r.dropped}</td>
                  <td>{r.errors}</td>
                  <td>{r.lastError ? `${dateTime(r.lastError.at)} ${r.lastError.device}: ${r.lastError.message}` : '—'}</td>
                </tr>
              ))}
            </tbody>
          </TableWrap>
        )}
      </Section>
      <Alarms />
    </>
  )
}
